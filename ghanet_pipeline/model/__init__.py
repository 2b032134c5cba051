"""G-HANet and its baselines (the model and its two attention modes: ``docs/model.md``).

For inference (slide only)::

    from ghanet_pipeline.model import load_fold_model
    model, ckpt = load_fold_model("models/ghanet/fold0/checkpoint_final.pt")
    with torch.no_grad():
        out = model(features, return_attention=True)   # features: float tensor (N, D)
    out["hazards"] (n_bins,), out["S"] (n_bins,), out["risk"] (scalar, = -sum(S)),
    out["morphology"] (N,)   E1, gated attention over patches (G-HANet, ABMIL)
    out["association"] (G, N)  E2, top-20% softmax of M per token (G-HANet; None for ABMIL)
    out["association_logits"] (G, N)  M, round-2 cross-attention logits averaged over heads
    ckpt.group_names, ckpt.feature_dim, ckpt.encoder, ckpt.train_median_risk, ...
    (ckpt: ghanet_pipeline.contracts.training.CheckpointMeta, the checkpoint's metadata)

``check_features(ckpt, dim, source, encoder=...)`` raises ``DimensionMismatchError`` naming both sides.
"""

from __future__ import annotations

import importlib

from ghanet_pipeline.model.names import GHANET_MODELS, MODEL_NAMES, SLIDE_MODELS

# Loaded on first use, so that ``model.names`` (read by the Snakefile at parse time) needs no torch.
_LAZY = {
    "ABMIL": "baselines", "SNN": "baselines", "GHANet": "ghanet",
    **{name: "factory" for name in (
        "DimensionMismatchError", "build_model", "check_features", "check_genomic_columns",
        "count_parameters", "load_checkpoint", "load_fold_model", "model_config", "read_checkpoint",
    )},
}

__all__ = ["GHANET_MODELS", "MODEL_NAMES", "SLIDE_MODELS", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
