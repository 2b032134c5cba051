"""A built encoder: the module, its device and precision, and what outputs record about it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ghanet_pipeline.features.encoder_types import EncoderSpec


@dataclass
class Encoder:
    """A built encoder: the module plus everything an output must record about it."""

    spec: EncoderSpec
    model: nn.Module
    dim: int
    weights: str  # "random", or where the weights came from
    weights_sha256: str  # "" for random weights
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None

    def to(self, device: torch.device | str, precision: str = "auto") -> "Encoder":
        """Move to ``device`` (channels_last) and pick the autocast dtype for ``precision``."""
        self.device = torch.device(device)
        precision = resolve_precision(precision, self.device)
        self.model = self.model.to(self.device).to(memory_format=torch.channels_last).eval()
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        mean = torch.tensor(self.spec.mean, dtype=torch.float32, device=self.device) * 255.0
        std = torch.tensor(self.spec.std, dtype=torch.float32, device=self.device) * 255.0
        self._mean = mean.view(1, 3, 1, 1)
        self._std = std.view(1, 3, 1, 1)
        return self

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype is torch.bfloat16 else "fp32"

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float (B, 3, h, w), channels_last, on the device."""
        x = patches.to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        if self.spec.fixed_input_size and x.shape[-1] != self.spec.input_size:
            size = (self.spec.input_size, self.spec.input_size)
            x = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(patches)
        return self.forward_normalised(x)

    @torch.inference_mode()
    def forward_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Encode an already normalised float batch (what the encoder-only benchmark times)."""
        ctx = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.model(x)
        return out.float()


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; ``fp32`` / ``bf16`` as given."""
    if precision == "auto":
        precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision
