"""Reconstruction targets: per gene family, the columns that separate low from high risk."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from ghanet_pipeline.genomics.groups import Group


def risk_groups(bins: np.ndarray, censorship: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(low-risk mask, high-risk mask): bin >= n_bins/2 any censorship; uncensored bin < n_bins/2."""
    low = bins >= n_bins / 2
    high = (bins < n_bins / 2) & (censorship == 0)
    return low, high


def welch_pvalues(scaled: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per-column Welch p-values; undefined (constant, too few patients) -> 1."""
    from scipy import stats

    if low.sum() < 2 or high.sum() < 2:
        return np.ones(scaled.shape[1])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant columns: precision loss
        result = stats.ttest_ind(scaled[low], scaled[high], axis=0, equal_var=False)
    p = np.asarray(result.pvalue, dtype=float)
    return np.where(np.isfinite(p), p, 1.0)


def select_targets(
    groups: Sequence[Group], columns: Sequence[str], pvalues: np.ndarray, alpha: float
) -> tuple[dict[str, list[str]], list[str]]:
    """Per group the columns with p < alpha (group order), else its lowest-p column; also the fallbacks."""
    p_of = dict(zip(columns, pvalues))
    targets: dict[str, list[str]] = {}
    fallbacks: list[str] = []
    for group in groups:
        chosen = [c for c in group.columns if p_of[c] < alpha]
        if not chosen:
            best = min(group.columns, key=lambda c: (p_of[c], c))
            chosen = [best]
            fallbacks.append(f"{group.name}: no column with p < {alpha}; kept the lowest-p column {best} (p = {p_of[best]:.3g})")
        targets[group.name] = chosen
    return targets, fallbacks
