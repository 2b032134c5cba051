"""Records of the train stage: ``result.json`` of a fold, ``summary.json`` of a model, and the
metadata stored beside the weights in ``checkpoint_{final,best}.pt`` (docs/contracts.md, "train").

Field names are the keys on disk. Every field has a default: the report and summarize read
records written by older versions and by hand (tests, users), and treat a missing value as
"not recorded"; the one field a reader cannot do without is checked where it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from ghanet_pipeline.contracts.base import Record

BEST_NOTE = "optimistic: the epoch is selected on the validation fold"
POPULATION_STD = "population (ddof=0)"

# CheckpointMeta.selection
SELECTION_FINAL = "final"
SELECTION_BEST = "best_val_optimistic"

# Checkpoint keys that are not metadata: the weights, and keys of resume.pt's state.
WEIGHTS_KEY = "state_dict"


@dataclass(frozen=True)
class FoldResult(Record):
    """``models/{model}/fold{k}/result.json``: the outcome of one training job."""

    KIND: ClassVar[str] = "fold result"

    model: str = ""
    fold: int | None = None
    cindex_final: float | None = None  # validation c-index of the last epoch's weights
    cindex_best: float | None = None  # of the best epoch (selected on the validation fold: optimistic)
    best_epoch: int | None = None
    best_note: str = BEST_NOTE
    cindex_train_final: float | None = None
    epochs: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    excluded: tuple[Mapping[str, str], ...] = ()  # {"case_id", "reason"} per patient left out
    train_median_risk: float | None = None  # of the final weights: the risk-group threshold
    device: str = ""
    seconds: float | None = None
    package_version: str = ""
    # the model configuration, settings and patient set it was trained with (a later job keeps a
    # fold whose result has the current one); "" in results written before it existed
    fingerprint: str = ""


@dataclass(frozen=True)
class ModelSummary(Record):
    """``models/{model}/summary.json``: the folds of one model gathered (``ghanet summarize``)."""

    KIND: ClassVar[str] = "model summary"

    model: str = ""
    folds: tuple[int, ...] = ()
    cindex_final_mean: float | None = None
    cindex_final_std: float | None = None
    cindex_final_per_fold: tuple[float | None, ...] = ()
    cindex_best_mean_optimistic: float | None = None
    cindex_best_std_optimistic: float | None = None
    cindex_best_per_fold_optimistic: tuple[float | None, ...] = ()
    best_epoch_per_fold_optimistic: tuple[int | None, ...] = ()
    n_val_per_fold: tuple[int | None, ...] = ()
    n_excluded_per_fold: tuple[int, ...] = ()
    std: str = POPULATION_STD


@dataclass(frozen=True)
class CheckpointMeta(Record):
    """Every key of ``checkpoint_{final,best}.pt`` except the weights (``state_dict``).

    Plain values only (str, int, float, None, lists, dicts), so a checkpoint loads with
    ``torch.load(path, weights_only=True)``. ``model`` and ``model_config`` rebuild the network.
    """

    KIND: ClassVar[str] = "checkpoint"

    model: str
    model_config: Mapping[str, Any]
    encoder: str = ""  # feature encoder of the training slides ("" for snn)
    feature_dim: int = 0  # 0: the model reads no slide features
    group_names: tuple[str, ...] = ()
    target_columns: Any = field(default_factory=dict)  # group name -> genomic target columns
    genomic_columns: tuple[str, ...] = ()  # snn's input columns, in order
    bin_edges: tuple[float, ...] = ()
    n_bins: int | None = None
    fold: int | None = None
    package_version: str = ""
    epoch: int | None = None
    train_median_risk: float | None = None  # median risk of the training set under these weights
    val_cindex: float | None = None
    selection: str = ""  # SELECTION_FINAL or SELECTION_BEST

    def checkpoint(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """The dict ``torch.save`` writes: this metadata and the weights."""
        return {**self.to_attrs(), WEIGHTS_KEY: dict(state_dict)}

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], *, source: str = "") -> CheckpointMeta:
        return cls.from_attrs({k: v for k, v in checkpoint.items() if k != WEIGHTS_KEY}, source=source)
