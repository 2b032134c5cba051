"""One fold's fit on its training patients: the scaler, the scaled table and the targets."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ghanet_pipeline.config import GenomicsSettings
from ghanet_pipeline.genomics.folds import Fold
from ghanet_pipeline.genomics.groups import Group
from ghanet_pipeline.genomics.outputs import FittedFold
from ghanet_pipeline.genomics.problems import GenomicsError, Problems
from ghanet_pipeline.genomics.scaling import fit_scaler
from ghanet_pipeline.genomics.targets import risk_groups, select_targets, welch_pvalues

# Scaled values beyond this are counted in the report's notes (near-constant training columns).
EXTREME_Z = 50.0


def fit_fold(k: int, fold: Fold, matrix: pd.DataFrame, patients: pd.DataFrame, groups: list[Group],
             settings: GenomicsSettings, problems: Problems) -> FittedFold:
    if len(fold.train) < 2 or not fold.val:
        raise GenomicsError(f"fold {k}: {len(fold.train)} training and {len(fold.val)} validation patient(s); need at least 2 and 1")
    scaler = fit_scaler(matrix, fold.train)
    scaled, n_imputed = scaler.transform(matrix)
    train = patients.loc[list(fold.train)]
    low, high = risk_groups(train["bin"].to_numpy(), train["censorship"].to_numpy(), settings.n_bins)
    pvalues = welch_pvalues(scaled.loc[list(fold.train)].to_numpy(), low, high)
    targets, fallbacks = select_targets(groups, list(scaled.columns), pvalues, settings.ttest_alpha)
    for text in fallbacks:
        problems.note(f"fold {k}: {text}")
    if n_imputed:
        problems.note(f"fold {k}: imputed {n_imputed} missing genomic value(s) with the training mean")
    extreme = _note_extreme(k, scaled, problems)
    info = {
        "train": len(fold.train),
        "val": len(fold.val),
        "imputed": n_imputed,
        "n_extreme_values": extreme,
        "targets": {name: len(cols) for name, cols in targets.items()},
        "n_low_risk": int(low.sum()),
        "n_high_risk": int(high.sum()),
    }
    return FittedFold(fold, scaler, scaled, targets, info)


def _note_extreme(k: int, scaled: pd.DataFrame, problems: Problems) -> int:
    """How many scaled values are beyond ``EXTREME_Z`` (noted when any)."""
    extreme = np.abs(scaled.to_numpy()) > EXTREME_Z
    if extreme.any():
        problems.note(
            f"fold {k}: {int(extreme.sum())} scaled value(s) beyond |z| > {EXTREME_Z:g} in {int(extreme.any(axis=0).sum())} "
            f"column(s) (columns nearly constant on the training patients; max |z| {np.abs(scaled.to_numpy()).max():.4g})"
        )
    return int(extreme.sum())
