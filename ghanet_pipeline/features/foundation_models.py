"""The modules behind the foundation-encoder presets (:mod:`ghanet_pipeline.features.encoder_presets`).

A timm ViT trunk plus the pooling each model's authors specify (class token; class token and
mean patch token; CONCH's attentional pooler), weights loaded strictly from the checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ghanet_pipeline.features.checkpoints import (
    existing_weights_file,
    read_state_dict,
    seeded,
)
from ghanet_pipeline.features.encoder import Encoder
from ghanet_pipeline.features.encoder_presets import (
    POOLINGS,
    Preset,
    locate_weights,
    preset_spec,
)
from ghanet_pipeline.features.encoder_types import DEFAULT, RANDOM, sha256_file

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- modules


class AttentionalPooler(nn.Module):
    """Cross-attention of learned queries over all tokens (CONCH's contrastive pooler).

    Parameter names follow the published checkpoint so it loads strictly.
    """

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.heads = n_head
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch = tokens.shape[0]
        q = self.to_q(self.ln_q(self.query)).expand(batch, -1, -1)
        k, v = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, N, H*D) -> (B, H, N, D)
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).flatten(2))


class PooledViT(nn.Module):
    """A timm ViT trunk plus the pooling its authors specify; returns (B, dim)."""

    def __init__(self, trunk: nn.Module, pooling: str, pool_dim: int = 0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.trunk = trunk
        self.pooling = pooling
        width = int(trunk.embed_dim)
        if pooling == "attn_pool":
            self.attn_pool_contrast = AttentionalPooler(pool_dim, width, n_head=8, n_queries=1)
            self.ln_contrast = nn.LayerNorm(pool_dim)
            self.num_features = pool_dim
        else:
            self.num_features = 2 * width if pooling == "cls+patch_mean" else width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)
        if self.pooling == "cls":
            return tokens[:, 0]
        if self.pooling == "cls+patch_mean":
            # Patch tokens start after the class and register tokens.
            patches = tokens[:, self.trunk.num_prefix_tokens :]
            return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])


def build_module(preset: Preset) -> PooledViT:
    """The architecture, randomly initialised (seed it from the caller)."""
    import timm

    trunk = timm.create_model(preset.arch, pretrained=False, **preset.kwargs())
    return PooledViT(trunk, preset.pooling, preset.pool_dim)


def load_weights(module: PooledViT, state: dict[str, torch.Tensor], path: Path, preset: Preset) -> None:
    """Load a checkpoint strictly: trunk-only (UNI, Virchow2...) or trunk + pooler (CONCH)."""
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.")) or k in module.trunk.state_dict()}
    target: nn.Module = module if any(k.startswith("trunk.") for k in state) else module.trunk
    if target is module.trunk and preset.pooling == "attn_pool":
        raise ValueError(f"{path}: holds no attentional pooler (keys 'attn_pool_contrast.*'), so it is not a {preset.title} checkpoint")
    key = "trunk.pos_embed" if target is module else "pos_embed"
    own = target.state_dict()
    if key in state and key in own and state[key].shape != own[key].shape:
        from timm.layers import resample_abs_pos_embed

        trunk = module.trunk
        prefix = 0 if getattr(trunk, "no_embed_class", False) else trunk.num_prefix_tokens
        state[key] = resample_abs_pos_embed(state[key], new_size=list(trunk.patch_embed.grid_size), num_prefix_tokens=prefix)
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{path}: does not fit encoder {preset.name} ({preset.arch}, {preset.embed_dim}-d tokens): {str(err)[:400]}"
        ) from err


# ----------------------------------------------------------------------------- the Encoder


def build_preset_encoder(preset: Preset, weights: str, allow_download: bool) -> Encoder:
    """An :class:`~ghanet_pipeline.features.encoder.Encoder` for ``preset``: ``default`` (the HF cache,
    or a download when allowed), ``random`` (tests, benchmarks) or a checkpoint path."""
    path: Path | None = None
    if weights != RANDOM:  # find the weights first: a missing file fails before a 1 B-parameter build
        path = locate_weights(preset, allow_download) if weights == DEFAULT else existing_weights_file(weights, preset.name)
    with seeded():
        module = build_module(preset)
    if path is None:
        desc, digest = RANDOM, ""
    else:
        load_weights(module, read_state_dict(path), path, preset)
        desc = f"{preset.hub_id}: {path}" if weights == DEFAULT else str(path)
        digest = sha256_file(path)
    if int(module.num_features) != preset.dim:  # the preset's promise, checked on the built module
        raise ValueError(f"encoder {preset.name}: built {module.num_features}-d features, the preset says {preset.dim}")
    return Encoder(spec=preset_spec(preset), model=module, dim=preset.dim, weights=desc, weights_sha256=digest)
