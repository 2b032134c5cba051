"""Genomic cells as numbers: what is missing, what is implausible, and when too much is missing."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ghanet_pipeline.genomics.problems import GenomicsError, Problems

# Genomic values beyond this magnitude are treated as missing (a unit or parsing error).
HUGE = 1e12


def numeric_matrix(patients: pd.DataFrame, columns: Sequence[str], problems: Problems) -> pd.DataFrame:
    """Used genomic columns as float64; non-numeric, infinite and huge cells become NaN (reported)."""
    block = patients[list(columns)]
    values = block.apply(to_float)
    raw_missing = block.isna().to_numpy()
    nan = values.isna().to_numpy()
    arr = values.to_numpy()
    _report_cells(problems, "non_numeric", "non-numeric", nan & ~raw_missing, block, columns)
    inf = np.isinf(arr)
    _report_cells(problems, "infinite", "infinite", inf, block, columns)
    huge = np.isfinite(arr) & (np.abs(arr) > HUGE)
    _report_cells(problems, "huge", f"huge (|x| > {HUGE:g})", huge, block, columns)
    arr = np.where(inf | huge, np.nan, arr)
    _report_cells(problems, "missing", "empty", raw_missing, block, columns)
    return pd.DataFrame(arr, index=patients.index, columns=list(columns))


def to_float(column: pd.Series) -> pd.Series:
    """Numbers as float64, anything else NaN; a number too large for float64 (``1e400``) is inf, not text."""
    values = pd.to_numeric(column, errors="coerce").astype(float)
    text = values.isna() & column.notna()
    if text.any():
        values[text] = [_float_or_nan(v) for v in column[text]]
    return values


def _float_or_nan(value) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        return float("nan")


def _report_cells(problems: Problems, kind: str, what: str, mask: np.ndarray, block: pd.DataFrame, columns) -> None:
    """One line per column with such cells, naming the patients and raw values (first 10)."""
    for c in np.flatnonzero(mask.any(axis=0)):
        rows = np.flatnonzero(mask[:, c])
        shown = ", ".join(f"{block.index[r]} ({block.iat[r, c]!r})" for r in rows[:10])
        more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
        problems.add(
            kind,
            f"column {columns[c]}: {len(rows)} {what} value(s), treated as missing and imputed with the "
            f"training-fold mean: {shown}{more}",
        )


def check_missing(matrix: pd.DataFrame, max_fraction: float) -> None:
    """Fail when a column or a patient has more than ``max_fraction`` of its values missing."""
    missing = matrix.isna()
    col_frac = missing.mean(axis=0)
    row_frac = missing.mean(axis=1)
    bad_cols = col_frac[col_frac > max_fraction]
    bad_rows = row_frac[row_frac > max_fraction]
    if bad_cols.empty and bad_rows.empty:
        return
    parts = []
    if not bad_cols.empty:
        listed = ", ".join(f"{c} ({f:.0%})" for c, f in bad_cols.head(20).items())
        parts.append(f"{len(bad_cols)} column(s) with missing values over {max_fraction:.0%}: {listed}")
    if not bad_rows.empty:
        listed = ", ".join(f"{c} ({f:.0%})" for c, f in bad_rows.head(20).items())
        parts.append(f"{len(bad_rows)} patient(s) with missing values over {max_fraction:.0%}: {listed}")
    raise GenomicsError(
        "too many missing genomic values (empty, non-numeric, infinite or huge):\n  " + "\n  ".join(parts)
        + "\nfix the table, drop those columns from the group definition, or raise genomics.max_missing_fraction"
    )


def report_genomic_conflicts(table: pd.DataFrame, patients: pd.Index, columns: Sequence[str], problems: Problems) -> None:
    """Slide rows of one patient whose genomic values differ (the first row is used)."""
    rows = table[table["case_id"].isin(patients)]
    repeated = rows.duplicated("case_id", keep=False).to_numpy()
    if not repeated.any():
        return
    sub = rows.loc[repeated]
    values = sub[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    cases = sub["case_id"].to_numpy()
    for case_id in dict.fromkeys(cases):
        block = values[cases == case_id]
        same = (block == block[0]) | (np.isnan(block) & np.isnan(block[0]))
        differing = [columns[i] for i in np.flatnonzero(~same.all(axis=0))]
        if differing:
            shown = ", ".join(differing[:10]) + (" ..." if len(differing) > 10 else "")
            problems.add(
                "genomic_conflict",
                f"case {case_id}: its {len(block)} slide rows differ in {len(differing)} genomic column(s) "
                f"({shown}); the first row's values are used",
            )
