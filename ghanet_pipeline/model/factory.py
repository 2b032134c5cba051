"""Build a model by name from a plain config dict, and rebuild one from a checkpoint.

``model_config(name, ...)`` returns the dict stored in checkpoints (``model_config``);
``build_model(name, config)`` rebuilds the same architecture from it;
``load_fold_model(path)`` returns ``(model in eval mode, CheckpointMeta)``; ``check_features``
and ``check_genomic_columns`` say when inputs do not match what a checkpoint was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ghanet_pipeline.contracts.training import CheckpointMeta
from ghanet_pipeline.model.baselines import ABMIL, SNN
from ghanet_pipeline.model.ghanet import GHANet
from ghanet_pipeline.model.names import GHANET_MODELS, MODEL_NAMES, SLIDE_MODELS  # noqa: F401  (re-exported)


class DimensionMismatchError(ValueError):
    """Input dimensions differ from what a checkpoint was trained on."""


def model_config(
    name: str,
    *,
    feature_dim: int | None = None,
    group_sizes: Sequence[int] | None = None,
    genomic_dim: int | None = None,
    n_bins: int = 4,
    attention_mode: str = "clean",
    dropout: float = 0.25,
) -> dict[str, Any]:
    """The plain dict that rebuilds model ``name`` (stored in checkpoints)."""
    if name in GHANET_MODELS:
        if feature_dim is None or not group_sizes:
            raise ValueError(f"{name} needs feature_dim and group_sizes")
        return {
            "feature_dim": int(feature_dim),
            "group_sizes": [int(k) for k in group_sizes],
            "n_bins": int(n_bins),
            "hidden": 512,
            "heads": 4,
            "head_dim": 128,
            "dropout": float(dropout),
            "attention_mode": attention_mode,
        }
    if name == "abmil":
        if feature_dim is None:
            raise ValueError("abmil needs feature_dim")
        return {"feature_dim": int(feature_dim), "n_bins": int(n_bins), "hidden": 512, "dropout": float(dropout)}
    if name == "snn":
        if genomic_dim is None:
            raise ValueError("snn needs genomic_dim")
        return {
            "input_dim": int(genomic_dim),
            "n_bins": int(n_bins),
            "hidden": [256, 256],
            "dropout": float(dropout),
            "activation": "selu",
        }
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def build_model(name: str, config: dict[str, Any]) -> nn.Module:
    if name in GHANET_MODELS:
        return GHANet(**config)
    if name == "abmil":
        return ABMIL(**config)
    if name == "snn":
        return SNN(**config)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint as saved; plain values and tensors only (``weights_only``: never runs pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there; run 'ghanet train' for this model and fold first")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    """(metadata, weights) of a checkpoint written by ``ghanet train``."""
    checkpoint = load_checkpoint(path)
    return CheckpointMeta.from_checkpoint(checkpoint, source=str(path)), checkpoint["state_dict"]


def load_fold_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild a trained model from its checkpoint; returns (model in eval mode, its metadata)."""
    meta, weights = read_checkpoint(path)
    model = build_model(meta.model, dict(meta.model_config))
    model.load_state_dict(weights)
    return model.to(device).eval(), meta


def check_features(checkpoint: CheckpointMeta, dim: int, source: str, *, encoder: str = "",
                   checkpoint_path: str | Path = "") -> None:
    """Patch features of ``source`` must have the checkpoint's dimension and, where both record
    one, come from its encoder; else an error naming both sides and the fix."""
    want_encoder, want_dim = checkpoint.encoder or "", int(checkpoint.feature_dim or 0)
    if not ((want_encoder and encoder and want_encoder != encoder) or (want_dim and int(dim) != want_dim)):
        return
    trained = f"checkpoint {checkpoint_path} " if checkpoint_path else "the checkpoint "
    theirs = f"encoder '{encoder}' ({dim}-d features)" if encoder else f"{dim}-d features"
    raise DimensionMismatchError(
        f"{trained}({checkpoint.model}, fold {checkpoint.fold}) was trained on encoder '{want_encoder}' "
        f"({want_dim}-d features) but {source} holds {theirs}; extract the slides with '{want_encoder}' "
        "(features.encoder) or use models trained on this encoder"
    )


def check_genomic_columns(checkpoint: CheckpointMeta, columns: Sequence[str], source: str) -> None:
    """Error naming both sides when genomic columns do not match the checkpoint."""
    expected = list(checkpoint.genomic_columns or [])
    if expected and list(columns) != expected:
        missing = [c for c in expected if c not in set(columns)][:5]
        raise DimensionMismatchError(
            f"genomics dimension mismatch: {source} has {len(columns)} genomic columns but the checkpoint "
            f"({checkpoint.model}, fold {checkpoint.fold}) expects {len(expected)}"
            + (f" (missing e.g. {missing})" if missing else " (same count, different order/names)")
        )
