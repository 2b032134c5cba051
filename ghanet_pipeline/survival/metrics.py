"""Survival metrics: Harrell's concordance index as scikit-survival computes it."""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)


def risk_from_survival(survival: np.ndarray) -> np.ndarray:
    """risk = -sum(S) over the bins: higher risk, shorter expected survival.

    Keeps the input's floating dtype (float32 curves give float32 risks), so training's stored
    median risk and inference's risks are the same numbers for the same patient and model:
    every risk in the pipeline comes from here (docs/contracts.md, "risk and risk_group").
    """
    survival = np.asarray(survival)
    if not np.issubdtype(survival.dtype, np.floating):
        survival = survival.astype(np.float64)
    return -survival.sum(axis=-1)


def concordance_index(risk, survival_months, censorship) -> float:
    """Harrell's c-index (ties as scikit-survival handles them); event = 1 - censorship.

    Returns NaN (with a warning) when no pair is comparable, e.g. every patient censored.
    """
    from sksurv.metrics import concordance_index_censored

    risk = np.asarray(risk, dtype=float)
    time = np.asarray(survival_months, dtype=float)
    event = (1 - np.asarray(censorship, dtype=float)).astype(bool)
    if not (len(risk) == len(time) == len(event)):
        raise ValueError(f"c-index inputs differ in length: {len(risk)} risks, {len(time)} times, {len(event)} events")
    if len(risk) < 2 or not event.any() or not np.isfinite(risk).all():
        log.warning("c-index undefined for %d patients with %d events", len(risk), int(event.sum()))
        return math.nan
    try:
        return float(concordance_index_censored(event, time, risk)[0])
    except (ValueError, ZeroDivisionError) as err:  # no comparable pairs
        log.warning("c-index undefined: %s", err)
        return math.nan
