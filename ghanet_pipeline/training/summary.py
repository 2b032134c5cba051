"""Gather the folds of a model into ``summary.json`` (``ghanet summarize``); torch-free, so the
summary job starts in a fraction of a second."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ghanet_pipeline.contracts.base import ContractError, read_json_record
from ghanet_pipeline.contracts.training import POPULATION_STD, FoldResult, ModelSummary
from ghanet_pipeline.io.layout import FoldFiles, ModelFiles
from ghanet_pipeline.training.errors import TrainInputError


def read_fold_results(models_dir: str | Path) -> list[FoldResult]:
    """``fold*/result.json`` of one model, in fold order."""
    results = []
    for fold_dir in ModelFiles(Path(models_dir)).fold_dirs():
        path = FoldFiles(fold_dir).result
        if not path.is_file():
            continue
        result = read_json_record(FoldResult, path)
        if result.fold is None:
            raise ContractError(f"{path} lacks 'fold'; rerun 'ghanet train' for {fold_dir}")
        results.append(result)
    return results


def summarize(models_dir: str | Path, model_name: str | None = None) -> ModelSummary:
    """Cross-fold mean and population std of the final-epoch and (optimistic) best-epoch c-index."""
    root = Path(models_dir)
    results = read_fold_results(root)
    if not results:
        raise TrainInputError(f"{root}: no fold*/result.json; run 'ghanet train' for each fold first")

    def stats(key: str) -> tuple[tuple, float | None, float | None]:
        values = tuple(getattr(r, key) for r in results)
        finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
        if not len(finite):
            return values, None, None
        return values, float(finite.mean()), float(finite.std(ddof=0))

    final, final_mean, final_std = stats("cindex_final")
    best, best_mean, best_std = stats("cindex_best")
    return ModelSummary(
        model=model_name or root.name,
        folds=tuple(int(r.fold) for r in results),
        cindex_final_mean=final_mean,
        cindex_final_std=final_std,
        cindex_final_per_fold=final,
        cindex_best_mean_optimistic=best_mean,
        cindex_best_std_optimistic=best_std,
        cindex_best_per_fold_optimistic=best,
        best_epoch_per_fold_optimistic=tuple(r.best_epoch for r in results),
        n_val_per_fold=tuple(r.n_val for r in results),
        n_excluded_per_fold=tuple(len(r.excluded) for r in results),
        std=POPULATION_STD,
    )
