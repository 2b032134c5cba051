"""Per-fold z-scoring fitted on the training patients, with missing values imputed."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Scaler:
    columns: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    def transform(self, matrix: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        """Z-scored values with missing cells imputed (mean -> 0); also the imputed cell count."""
        values = matrix[list(self.columns)].to_numpy(dtype=float)
        missing = np.isnan(values)
        scaled = (values - self.mean) / self.std
        scaled[missing] = 0.0
        return pd.DataFrame(scaled, index=matrix.index, columns=list(self.columns)), int(missing.sum())

    def to_json(self) -> dict:
        return {"columns": list(self.columns), "mean": self.mean.tolist(), "std": self.std.tolist()}


def fit_scaler(matrix: pd.DataFrame, train: Sequence[str]) -> Scaler:
    """Mean and population std of the training rows' observed values (see module doc)."""
    values = matrix.loc[list(train)].to_numpy(dtype=float)
    observed = (~np.isnan(values)).sum(axis=0)
    total = np.where(np.isnan(values), 0.0, values).sum(axis=0)
    mean = np.divide(total, observed, out=np.zeros(values.shape[1]), where=observed > 0)
    centred = np.where(np.isnan(values), 0.0, values - mean)
    var = np.divide((centred**2).sum(axis=0), observed, out=np.zeros(values.shape[1]), where=observed > 0)
    std = np.sqrt(var)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    constant = (observed > 0) & (low == high)
    mean = np.where(constant, low, mean)  # exactly, so constant columns scale to exactly 0
    tiny = std <= 10 * np.finfo(float).eps * np.maximum(np.abs(mean), 1.0)  # rounding noise, not spread
    std = np.where(constant | tiny | ~np.isfinite(std), 1.0, std)
    return Scaler(tuple(matrix.columns), mean, std)
