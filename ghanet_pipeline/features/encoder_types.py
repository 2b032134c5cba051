"""What every encoder module shares, without torch: the spec type, the weights settings, the errors.

The modules import in one direction: ``encoder_types`` <- ``encoder_presets`` <- ``encoder_names``
(torch-free: the Snakefile checks names at parse time) <- ``encoder`` / ``checkpoints`` (torch)
<- ``foundation_models`` <- ``encoders`` (the factory).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

RANDOM = "random"  # features.weights: seeded random initialisation (tests and benchmarks only)
DEFAULT = "default"  # features.weights: the encoder's own offline weights
HF_HUB_PREFIX = "hf-hub:"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3


class UnknownEncoderError(ValueError):
    """``features.encoder`` names no encoder this installation can build."""


class WeightsUnavailableError(FileNotFoundError):
    """The encoder's weights are not on this machine and downloading is not allowed."""


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder needs and produces. ``dim=None``: known only once built (generic timm)."""

    name: str
    arch: str
    dim: int | None
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    mpp: float
    precision: str  # precision the weights were trained in / recommended for inference
    fixed_input_size: bool = False
    description: str = ""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
