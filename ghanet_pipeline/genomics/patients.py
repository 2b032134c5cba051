"""One row per patient: ids cleaned, slide rows collapsed, survival checked."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ghanet_pipeline.config import GenomicsSettings
from ghanet_pipeline.genomics.problems import GenomicsError, Problems
from ghanet_pipeline.genomics.values import to_float


def clean_ids(table: pd.DataFrame, problems: Problems) -> pd.DataFrame:
    ids = table["case_id"].astype("string").str.strip()
    empty = ids.isna() | (ids == "")
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy()) + 2).tolist()
        problems.add("no_case_id", f"table row(s) at line(s) {rows}: empty case_id; those rows are left out")
    table = table.loc[~empty.to_numpy()].copy()
    table["case_id"] = ids[~empty].astype(str).to_numpy()
    table["slide_id"] = table["slide_id"].astype("string").str.strip().fillna("").astype(str)
    return table


def _survival_conflicts(table: pd.DataFrame) -> list[str]:
    keys = table[["case_id", "survival_months", "censorship"]].astype(str)
    counts = keys.drop_duplicates().groupby("case_id", sort=False).size()
    return counts.index[counts > 1].tolist()


def _describe_conflict(table: pd.DataFrame, case_id: str) -> str:
    rows = table.loc[table.case_id == case_id, ["slide_id", "survival_months", "censorship"]]
    parts = [f"{r.slide_id}: {r.survival_months!r} months, censorship {r.censorship!r}" for r in rows.itertuples()]
    return f"case {case_id} has rows that disagree on survival ({'; '.join(parts)})"


def collapse_patients(table: pd.DataFrame, settings: GenomicsSettings, problems: Problems) -> pd.DataFrame:
    """One row per case_id (its first row), with ``table_slide_ids``; survival conflicts handled."""
    table = clean_ids(table, problems)
    conflicts = _survival_conflicts(table)
    if conflicts and settings.on_conflicting_duplicates == "fail":
        details = "\n  ".join(_describe_conflict(table, c) for c in conflicts)
        raise GenomicsError(
            f"{len(conflicts)} case id(s) with conflicting survival_months/censorship between slide rows:\n  "
            f"{details}\nfix the table, or set genomics.on_conflicting_duplicates: first to keep each case's first row"
        )
    for case_id in conflicts:
        problems.add("conflict", _describe_conflict(table, case_id) + "; kept the first row")
    slides = table.groupby("case_id", sort=False)["slide_id"].agg(lambda s: [x for x in s if x])
    patients = table.drop_duplicates("case_id", keep="first").set_index("case_id", drop=False)
    patients["table_slide_ids"] = slides.reindex(patients.index)
    return patients


def _bad_survival_reason(raw_time, time: float, raw_cens, cens: float) -> str | None:
    if np.isnan(time):
        return f"survival_months {raw_time!r} is missing or not a number"
    if not np.isfinite(time):
        return f"survival_months {raw_time!r} is infinite"
    if time < 0:
        return f"survival_months {raw_time!r} is negative"
    if cens not in (0.0, 1.0):
        return f"censorship {raw_cens!r} is not 0 (event) or 1 (censored)"
    return None


def valid_survival(patients: pd.DataFrame, problems: Problems) -> pd.DataFrame:
    """Patients whose time and censorship can label them; the others are reported and left out."""
    time = to_float(patients["survival_months"]).to_numpy()
    cens = to_float(patients["censorship"]).to_numpy()
    keep = np.ones(len(patients), dtype=bool)
    for i, (case_id, raw_t, raw_c) in enumerate(zip(patients.index, patients.survival_months, patients.censorship)):
        reason = _bad_survival_reason(raw_t, time[i], raw_c, cens[i])
        if reason:
            keep[i] = False
            problems.add("bad_survival", f"patient {case_id}: {reason}; patient left out (no survival label)")
    out = patients.loc[keep].copy()
    out["survival_months"] = time[keep]
    out["censorship"] = cens[keep].astype(np.int64)
    if out.empty:
        raise GenomicsError("no patient has a usable survival_months and censorship; see the problems above")
    return out
