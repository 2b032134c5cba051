"""Presets for the pathology foundation encoders: UNI, UNI2-h, CONCH v1.5, Virchow2, H-optimus-0, Prov-GigaPath.

Each preset names the Hugging Face repo, the timm architecture and the keyword arguments its
authors build it with, the input size and normalisation, the pooling of the output tokens
and the resulting dimension, the precision the authors run it in, and the licence. Weights
come from the local Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``), from a checkpoint path (``features.weights``), or are
downloaded when ``features.allow_download`` is true (gated repos: accept the terms on the
model page and set ``HF_TOKEN``). Nothing here reaches the network otherwise.

Where the facts come from (checked December 2026):

- UNI: model card https://huggingface.co/MahmoodLab/UNI and TRIDENT
  (github.com/mahmoodlab/TRIDENT, trident/patch_encoder_models/load.py): ViT-L/16,
  ``init_values=1e-5``, class token, 1024-d, ImageNet mean/std, 224 px; TRIDENT runs fp16.
- UNI2-h: model card https://huggingface.co/MahmoodLab/UNI2-h and TRIDENT: timm
  ``vit_giant_patch14_224`` with depth 24, 24 heads, width 1536, ``mlp_ratio=2.66667*2``,
  SwiGLUPacked + SiLU, 8 register tokens, ``no_embed_class``; class token, 1536-d; bf16.
- CONCH v1.5: https://huggingface.co/MahmoodLab/conchv1_5 (file ``pytorch_model_vision.bin``)
  and TRIDENT's model_zoo/conchv1_5: ViT-L/16 trunk (LayerScale init 1.0, built at 224 and
  run at 448 by interpolating the position embedding), then an attentional pooler (one
  query, 8 heads, 1024 -> 768) and a LayerNorm: 768-d; ImageNet mean/std; fp16.
- Virchow2: model card https://huggingface.co/paige-ai/Virchow2 and TRIDENT: timm
  ``vit_huge_patch14_224``, 4 register tokens, ``mlp_ratio=5.3375``, SwiGLUPacked + SiLU;
  embedding = [class token, mean of the patch tokens (tokens 5:)] = 2560-d; fp16.
- H-optimus-0: model card https://huggingface.co/bioptimus/H-optimus-0 and TRIDENT: timm
  ``vit_giant_patch14_reg4_dinov2``, ``init_values=1e-5``; class token, 1536-d; mean
  (0.707223, 0.578729, 0.703617), std (0.211883, 0.230117, 0.177517); 224 px at 0.5 um/px; fp16.
- Prov-GigaPath tile encoder: https://huggingface.co/prov-gigapath/prov-gigapath and TRIDENT:
  timm ``vit_giant_patch14_dinov2`` re-parameterised to 16 px patches, depth 40, width 1536,
  24 heads, ``mlp_ratio=5.33334``; class token, 1536-d; resize 256 + centre crop 224,
  ImageNet mean/std; fp16.

This module is data only (no torch import: the Snakefile checks names with it); the models
are built in :mod:`ghanet_pipeline.features.foundation_models`. The presets build the architecture with ``pretrained=False`` and load the checkpoint into it
with ``strict=True`` (a classifier head aside), so a checkpoint that does not fit is an error
naming the file, never a silently half-initialised encoder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ghanet_pipeline.features.encoder_types import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
    WeightsUnavailableError,
)

log = logging.getLogger(__name__)

HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

# Layer classes named as strings so this module imports without timm; resolved when built.
_LAYERS = {"SwiGLUPacked": ("timm.layers", "SwiGLUPacked"), "SiLU": ("torch.nn", "SiLU")}

POOLINGS = ("cls", "cls+patch_mean", "attn_pool")


@dataclass(frozen=True)
class Preset:
    """One foundation encoder as its authors specify it."""

    name: str
    title: str
    hub_id: str
    arch: str  # timm architecture name
    timm_kwargs: tuple[tuple[str, Any], ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int  # width of the transformer's tokens
    pooling: str  # cls | cls+patch_mean | attn_pool
    dim: int  # output dimension after pooling
    patch_size: int  # px read from the slide at ``mpp`` (resized to ``input_size``)
    mpp: float
    precision: str  # what the authors run it in: fp16 | bf16 | fp32
    weights_files: tuple[str, ...]  # looked for in the repo snapshot, in order
    licence: str
    gated: bool
    source: str
    pool_dim: int = 0  # attn_pool only: output width of the pooler

    def kwargs(self) -> dict[str, Any]:
        """The timm keyword arguments with layer names resolved to classes."""
        import importlib

        out: dict[str, Any] = {}
        for key, value in self.timm_kwargs:
            if isinstance(value, str) and value in _LAYERS:
                module, attr = _LAYERS[value]
                value = getattr(importlib.import_module(module), attr)
            out[key] = value
        return out

    @property
    def gated_note(self) -> str:
        if not self.gated:
            return f"licence {self.licence}"
        return (
            f"licence {self.licence}; gated: accept the terms at https://huggingface.co/{self.hub_id} "
            "with your Hugging Face account and set HF_TOKEN to download"
        )


def _kw(**kwargs: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(kwargs.items())


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="uni",
            title="UNI (ViT-L/16)",
            hub_id="MahmoodLab/UNI",
            arch="vit_large_patch16_224",
            timm_kwargs=_kw(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True),
            input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            embed_dim=1024, pooling="cls", dim=1024,
            patch_size=256, mpp=0.5, precision="fp16",
            weights_files=("model.safetensors", "pytorch_model.bin"),
            licence="CC-BY-NC-ND-4.0 (non-commercial research)", gated=True,
            source="huggingface.co/MahmoodLab/UNI model card; TRIDENT patch_encoder_models/load.py (UNIInferenceEncoder)",
        ),
        Preset(
            name="uni2-h",
            title="UNI2-h (ViT-H/14, 8 registers)",
            hub_id="MahmoodLab/UNI2-h",
            arch="vit_giant_patch14_224",
            timm_kwargs=_kw(
                img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, mlp_layer="SwiGLUPacked",
                act_layer="SiLU", reg_tokens=8, dynamic_img_size=True,
            ),
            input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            embed_dim=1536, pooling="cls", dim=1536,
            patch_size=256, mpp=0.5, precision="bf16",
            weights_files=("model.safetensors", "pytorch_model.bin"),
            licence="CC-BY-NC-ND-4.0 (non-commercial research)", gated=True,
            source="huggingface.co/MahmoodLab/UNI2-h model card; TRIDENT load.py (UNIv2InferenceEncoder)",
        ),
        Preset(
            name="conch_v1_5",
            title="CONCH v1.5 vision tower (ViT-L/16 + attentional pooler)",
            hub_id="MahmoodLab/conchv1_5",
            arch="vit_large_patch16_224",
            # Built at 224 (the checkpoint's 14x14 position grid) and run at 448 by interpolation.
            timm_kwargs=_kw(img_size=224, patch_size=16, init_values=1.0, num_classes=0, global_pool="",
                            dynamic_img_size=True),
            input_size=448, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            embed_dim=1024, pooling="attn_pool", dim=768, pool_dim=768,
            patch_size=512, mpp=0.5, precision="fp16",
            weights_files=("pytorch_model_vision.bin",),
            licence="CC-BY-NC-ND-4.0 (non-commercial research)", gated=True,
            source="huggingface.co/MahmoodLab/conchv1_5; TRIDENT model_zoo/conchv1_5/conchv1_5.py (CONCHVisionTower)",
        ),
        Preset(
            name="virchow2",
            title="Virchow2 (ViT-H/14, 4 registers; class token + mean patch token)",
            hub_id="paige-ai/Virchow2",
            arch="vit_huge_patch14_224",
            timm_kwargs=_kw(
                img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool="",
                dynamic_img_size=True, mlp_layer="SwiGLUPacked", act_layer="SiLU",
            ),
            input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            embed_dim=1280, pooling="cls+patch_mean", dim=2560,
            patch_size=224, mpp=0.5, precision="fp16",
            weights_files=("model.safetensors", "pytorch_model.bin"),
            licence="CC-BY-NC-ND-4.0 (non-commercial research)", gated=True,
            source="huggingface.co/paige-ai/Virchow2 model card; TRIDENT load.py (Virchow2InferenceEncoder: output[:, 5:])",
        ),
        Preset(
            name="h-optimus-0",
            title="H-optimus-0 (ViT-g/14, 4 registers)",
            hub_id="bioptimus/H-optimus-0",
            arch="vit_giant_patch14_reg4_dinov2",
            timm_kwargs=_kw(img_size=224, num_classes=0, global_pool="token", init_values=1e-5, dynamic_img_size=True),
            input_size=224, mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
            embed_dim=1536, pooling="cls", dim=1536,
            patch_size=224, mpp=0.5, precision="fp16",
            weights_files=("model.safetensors", "pytorch_model.bin"),
            licence="Apache-2.0", gated=True,
            source="huggingface.co/bioptimus/H-optimus-0 model card; TRIDENT load.py (HOptimus0InferenceEncoder)",
        ),
        Preset(
            name="prov-gigapath",
            title="Prov-GigaPath tile encoder (ViT-g/16)",
            hub_id="prov-gigapath/prov-gigapath",
            arch="vit_giant_patch14_dinov2",
            timm_kwargs=_kw(
                img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24, mlp_ratio=5.33334,
                num_classes=0, dynamic_img_size=True,
            ),
            input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            embed_dim=1536, pooling="cls", dim=1536,
            # The authors resize 256 px tiles to 256 and crop the central 224: the same pixels as
            # reading 224 px at 0.5 um/px.
            patch_size=224, mpp=0.5, precision="fp16",
            weights_files=("model.safetensors", "pytorch_model.bin"),
            licence="Apache-2.0 with the Prov-GigaPath terms (research use only)", gated=True,
            source="huggingface.co/prov-gigapath/prov-gigapath; TRIDENT load.py (GigaPathInferenceEncoder)",
        ),
    )
}  # fmt: skip

# Other spellings users type for the same presets.
ALIASES = {
    "uni_v1": "uni", "uni2": "uni2-h", "uni_v2": "uni2-h", "uni2_h": "uni2-h", "conch_v15": "conch_v1_5",
    "conchv1_5": "conch_v1_5", "conch-v1.5": "conch_v1_5", "hoptimus0": "h-optimus-0", "h_optimus_0": "h-optimus-0",
    "gigapath": "prov-gigapath", "prov_gigapath": "prov-gigapath",
}  # fmt: skip


def find_preset(name: str) -> Preset | None:
    key = name.strip().lower()
    return PRESETS.get(ALIASES.get(key, key))


def listing() -> str:
    """One line per preset (``ghanet features --help`` and the docs)."""
    lines = []
    for p in PRESETS.values():
        gate = "gated" if p.gated else "open"
        lines.append(
            f"  {p.name:<14} {p.dim}-d, {p.input_size} px, {p.hub_id} ({gate}, {p.licence.split(' ')[0]}, {p.precision})"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the local cache


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (tests point it elsewhere)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def find_cached(hub_id: str, filenames: tuple[str, ...], cache: Path | None = None) -> Path | None:
    """A weights file of ``hub_id`` in the hub cache layout (models--org--name/snapshots/REV/FILE).

    Repo ids are case-insensitive on the Hub, and timm users download ``MahmoodLab/uni`` while
    the card says ``MahmoodLab/UNI``, so the folder is matched without regard to case. The
    snapshot that ``refs/main`` names comes first.
    """
    cache = cache or hf_cache_dir()
    wanted = "models--" + hub_id.replace("/", "--").lower()
    if not cache.is_dir():
        return None
    for folder in sorted(cache.iterdir()):
        if folder.name.lower() != wanted:
            continue
        snapshots = folder / "snapshots"
        ref = folder / "refs" / "main"
        order: list[Path] = []
        if ref.is_file():
            order.append(snapshots / ref.read_text().strip())
        if snapshots.is_dir():
            order += sorted(p for p in snapshots.iterdir() if p not in order)
        for snap in order:
            for name in filenames:
                if (snap / name).is_file():
                    return snap / name
    return None


def locate_weights(preset: Preset, allow_download: bool) -> Path:
    """The checkpoint file from the local cache, or downloaded when allowed."""
    found = find_cached(preset.hub_id, preset.weights_files)
    if found is not None:
        return found
    cache = hf_cache_dir()
    if not allow_download:
        raise WeightsUnavailableError(
            f"encoder {preset.name}: {preset.hub_id} is not in the local Hugging Face cache ({cache}) and "
            f"downloading is off. {preset.gated_note[0].upper()}{preset.gated_note[1:]}. Then either run "
            f"'huggingface-cli download {preset.hub_id}' on a machine with internet (copy the cache folder "
            "here and set HF_HUB_CACHE or HF_HOME), or set features.weights: /path/to/"
            f"{preset.weights_files[-1]}, or set features.allow_download: true"
        )
    from huggingface_hub import hf_hub_download

    last: Exception | None = None
    for name in reversed(preset.weights_files):  # the published file first (.bin for most)
        try:
            log.info("downloading %s/%s into %s (features.allow_download is true)", preset.hub_id, name, cache)
            return Path(hf_hub_download(preset.hub_id, name, cache_dir=str(cache)))
        except Exception as err:  # noqa: BLE001 - missing file, no access, no network: try the next name
            last = err
    raise WeightsUnavailableError(
        f"encoder {preset.name}: downloading {preset.hub_id} failed ({type(last).__name__}: {str(last)[:300]}). "
        f"{preset.gated_note[0].upper()}{preset.gated_note[1:]}"
    )


def with_overrides(preset: Preset, **timm_overrides: Any) -> Preset:
    """The same preset with some timm kwargs changed (tests build tiny models of the same family)."""
    kwargs = dict(preset.timm_kwargs)
    kwargs.update(timm_overrides)
    width = int(kwargs.get("embed_dim", preset.embed_dim))
    dim = {"cls": width, "cls+patch_mean": 2 * width, "attn_pool": preset.pool_dim}[preset.pooling]
    return replace(preset, timm_kwargs=tuple(kwargs.items()), embed_dim=width, dim=dim)


def preset_spec(preset: Preset) -> EncoderSpec:
    """The :class:`~ghanet_pipeline.features.encoder_types.EncoderSpec` of a preset."""
    return EncoderSpec(
        name=preset.name,
        arch=preset.arch,
        dim=preset.dim,
        input_size=preset.input_size,
        mean=preset.mean,
        std=preset.std,
        patch_size=preset.patch_size,
        mpp=preset.mpp,
        precision=preset.precision,
        fixed_input_size=True,  # patches are resized to the size the encoder was trained at
        description=f"{preset.title}, {preset.hub_id}; {preset.gated_note}",
    )
