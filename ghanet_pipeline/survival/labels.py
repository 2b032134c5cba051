"""Discrete survival bins and the bin x censorship class label (the MCAT convention).

Edges are the quantiles (linear interpolation, as ``pandas.qcut``) of ``survival_months`` over
the *uncensored* patients (one row per patient); the outer edges are widened to the cohort's
min - 1e-6 and max + 1e-6. Bins are left-closed, ``[e_i, e_{i+1})`` (``pd.cut(right=False)``).

Label encoding: ``label = bin * 2 + censorship`` (censorship 1 = censored), so
bin 0 event -> 0, bin 0 censored -> 1, bin 1 event -> 2, ... : ``2 * n_bins`` classes, the order
of the release's ``label_dict``. Balanced sampling draws over these classes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EPS = 1e-6


class LabelError(ValueError):
    """Survival bins cannot be computed from these patients."""


def bin_edges(months: np.ndarray, censorship: np.ndarray, n_bins: int) -> np.ndarray:
    """``n_bins + 1`` increasing edges (see module doc)."""
    months = np.asarray(months, dtype=float)
    censorship = np.asarray(censorship)
    uncensored = months[censorship == 0]
    if len(uncensored) < n_bins:
        raise LabelError(
            f"{len(uncensored)} uncensored patient(s): need at least n_bins={n_bins} events to place "
            "the quantile bin edges; lower genomics.n_bins or check the censorship column (1 = censored)"
        )
    edges = np.quantile(uncensored, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0] = months.min() - EPS
    edges[-1] = months.max() + EPS
    if np.any(np.diff(edges) <= 0):
        raise LabelError(
            f"survival bin edges are not strictly increasing ({np.round(edges, 4).tolist()}): too many tied "
            "event times for this many bins; lower genomics.n_bins"
        )
    return edges


def assign_bins(months: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Left-closed bin index of each time; every time in [edges[0], edges[-1]) gets one."""
    bins = pd.cut(np.asarray(months, dtype=float), bins=edges, right=False, labels=False, include_lowest=True)
    bins = np.asarray(bins, dtype=float)
    if np.isnan(bins).any():
        raise LabelError("a survival time lies outside the bin edges (edges come from these same times: a bug)")
    return bins.astype(np.int64)


def class_labels(bins: np.ndarray, censorship: np.ndarray) -> np.ndarray:
    return np.asarray(bins, dtype=np.int64) * 2 + np.asarray(censorship, dtype=np.int64)
