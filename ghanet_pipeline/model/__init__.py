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
    ckpt["group_names"], ckpt["feature_dim"], ckpt["encoder"], ckpt["train_median_risk"], ...

``check_feature_dim(ckpt, dim, source)`` raises ``DimensionMismatchError`` naming both sides.
"""

from .factory import (
    GHANET_MODELS,
    MODEL_NAMES,
    SLIDE_MODELS,
    DimensionMismatchError,
    build_model,
    check_feature_dim,
    check_genomic_columns,
    count_parameters,
    load_checkpoint,
    load_fold_model,
    model_config,
)
from .ghanet import GHANet
from .baselines import ABMIL, SNN

__all__ = [
    "ABMIL", "SNN", "GHANet", "GHANET_MODELS", "MODEL_NAMES", "SLIDE_MODELS", "DimensionMismatchError",
    "build_model", "check_feature_dim", "check_genomic_columns", "count_parameters", "load_checkpoint",
    "load_fold_model", "model_config",
]
