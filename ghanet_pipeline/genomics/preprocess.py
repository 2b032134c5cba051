"""Stage 3 (``ghanet genomics``): genomic groups, survival labels, folds and fold-fitted scalers.

Reads the MCAT-format cohort table (one row per slide: ``case_id``, ``slide_id``,
``survival_months``, ``censorship`` (1 = censored), clinical columns and ``<GENE>_rnaseq`` /
``_cnv`` / ``_mut`` columns; csv, tsv or zipped), a group definition (``signatures.csv`` or GMT;
without one, one group per modality) and optionally the sample sheet and the tissue
manifest. Writes ``patients.csv``, ``groups.json``, ``fold{k}/{split.json, genomics.parquet,
scaler.json, targets.json}``, ``summary.json`` and ``report.txt`` (see docs/contracts.md).

Decisions (each problem is one line in report.txt and a warning on the console):

- Rows of one case_id are one patient (first row's values). Rows that disagree on
  ``survival_months``/``censorship`` fail the stage naming the cases, unless
  ``on_conflicting_duplicates: first`` (keep the first row, as the release does). Rows that
  disagree on genomic values are reported; the first row is used.
- A patient whose time is missing, non-numeric, infinite or negative, or whose censorship is
  not 0/1, is left out (listed in the report), since no label can be made for it.
- Genomic cells that are empty, non-numeric, infinite or larger than ``HUGE`` in magnitude
  are missing values: counted, reported, and imputed with the training-fold mean (0 after
  z-scoring). If a used column or a patient has more than ``max_missing_fraction`` of its
  values missing, the stage fails naming them (fix the table or raise the threshold).
- Scaler per fold: mean and population std (ddof 0) of the training patients' observed
  values; a column constant on the training patients (or with a std at rounding-noise level)
  gets std 1 and its exact value as mean (it scales to 0 there), a column with no observed
  training value mean 0 and std 1. Every patient is transformed with it.
- Targets per fold and group: Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``)
  on the scaled, imputed training features between low-risk patients (bin >= n_bins/2, any
  censorship) and high-risk patients (uncensored, bin < n_bins/2); columns with p < ttest_alpha,
  in group order. A group with none keeps its single lowest-p column (ties: first by name);
  constant columns or too few patients give p = 1.
- Joins: with a sample sheet a patient's usable slides are its sheet slides (by case_id) that
  are ``ok`` in the manifest when one is given. Patients with genomics but no usable slide stay
  in patients.csv with empty ``slide_ids`` (a genomics-only model can use them; slide models
  skip them) and are reported; sheet slides whose case has no usable genomics row are reported.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ghanet_pipeline import __version__
from ghanet_pipeline.config import GenomicsSettings
from ghanet_pipeline.genomics.folds import Fold, make_folds, read_folds
from ghanet_pipeline.genomics.groups import (
    Group,
    match_groups,
    modality_groups,
    read_definition,
    usable_columns,
)
from ghanet_pipeline.io.sheet import (
    raw_header,
    read_samples,
    read_table_text,
    repeated_names,
)
from ghanet_pipeline.io.store import atomic_path, write_json, write_text
from ghanet_pipeline.survival.labels import (
    assign_bins,
    bin_edges,
    class_labels,
)

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("case_id", "slide_id", "survival_months", "censorship")
# Genomic values beyond this magnitude are treated as missing (a unit or parsing error).
HUGE = 1e12
# Scaled values beyond this are counted in the report's notes (near-constant training columns).
EXTREME_Z = 50.0
# Console lines per problem kind; report.txt always has all of them.
CONSOLE_LINES_PER_KIND = 20
OUTPUT_NAMES = ("patients.csv", "groups.json", "summary.json", "report.txt")


class GenomicsError(ValueError):
    """The cohort table (or its joins) cannot be used as it is."""


# ----------------------------------------------------------------------------- problems


@dataclass
class Problems:
    """Problem lines for report.txt, logged as they come (capped per kind on the console)."""

    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _per_kind: Counter = field(default_factory=Counter)

    def add(self, kind: str, text: str) -> None:
        self.lines.append(text)
        self._per_kind[kind] += 1
        if self._per_kind[kind] <= CONSOLE_LINES_PER_KIND:
            log.warning("%s", text)
        elif self._per_kind[kind] == CONSOLE_LINES_PER_KIND + 1:
            log.warning("more problems of kind '%s' follow; see report.txt for all of them", kind)

    def note(self, text: str) -> None:
        self.notes.append(text)
        log.info("%s", text)


# ----------------------------------------------------------------------------- table


def _separator(path: Path) -> str:
    name = path.name.lower()
    for ext in (".zip", ".gz", ".bz2", ".xz"):
        name = name.removesuffix(ext)
    return "\t" if name.endswith((".tsv", ".txt")) else ","


def read_cohort_table(path: str | Path) -> pd.DataFrame:
    """The cohort table as read (csv, tsv, or either zipped/gzipped; BOM and CRLF tolerated)."""
    p = Path(path)
    if not p.is_file():
        raise GenomicsError(f"cohort table {p} not found; set 'cohort_table' in config.yaml")
    return parse_cohort_text(_read_text(p), str(p), sep=_separator(p))


def _read_text(path: Path) -> str:
    """The table's text, decompressed (.zip with one member, .gz, .bz2, .xz) and decoded."""
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/") and not m.startswith("__MACOSX")]
                if len(members) != 1:
                    raise GenomicsError(f"{path}: a zipped cohort table holds exactly one file, found {len(members)}")
                raw = archive.read(members[0])
        else:
            opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)
            with opener(path, "rb") as handle:
                raw = handle.read()
        return raw.decode("utf-8-sig")
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError, UnicodeDecodeError) as err:
        raise GenomicsError(f"{path}: not a readable csv/tsv table: {err}") from err


def check_columns(table: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise GenomicsError(
            f"{source}: missing column(s) {', '.join(missing)}; an MCAT-format table has "
            f"{', '.join(REQUIRED_COLUMNS)} and <GENE>_rnaseq/_cnv/_mut columns"
        )
    duplicated = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if duplicated:
        raise GenomicsError(f"{source}: column(s) appear twice: {', '.join(duplicated)}")
    return table


def parse_cohort_text(text: str, source: str = "cohort table", sep: str = ",") -> pd.DataFrame:
    """Parse table text: the core of :func:`read_cohort_table` (and what the fuzz test drives)."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    try:
        table = pd.read_csv(io.StringIO(text), sep=sep, dtype={"case_id": str, "slide_id": str}, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise GenomicsError(f"{source}: not a readable csv/tsv table: {err}") from err
    # pandas renames a repeated NAME to NAME.1, so the check below would never see it: a gene
    # would silently drop out of its group. Look at the header as written.
    repeated = repeated_names(raw_header(text, sep))
    if repeated:
        raise GenomicsError(
            f"{source}: column(s) appear twice in the header: {', '.join(repeated)}. Each column once: "
            "delete the repeated column (or rename it if it is a different measurement)"
        )
    table.columns = [str(c).strip().replace("\r", "") for c in table.columns]
    return check_columns(table, source)


# ----------------------------------------------------------------------------- patients


def _clean_ids(table: pd.DataFrame, problems: Problems) -> pd.DataFrame:
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
    table = _clean_ids(table, problems)
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
    time = _to_float(patients["survival_months"]).to_numpy()
    cens = _to_float(patients["censorship"]).to_numpy()
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


# ----------------------------------------------------------------------------- genomic values


def numeric_matrix(patients: pd.DataFrame, columns: Sequence[str], problems: Problems) -> pd.DataFrame:
    """Used genomic columns as float64; non-numeric, infinite and huge cells become NaN (reported)."""
    block = patients[list(columns)]
    values = block.apply(_to_float)
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


def _to_float(column: pd.Series) -> pd.Series:
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


# ----------------------------------------------------------------------------- slides


def read_manifest(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise GenomicsError(f"manifest {p} not found; run 'ghanet manifest' (the tissue stage) first")
    table = pd.read_csv(io.StringIO(read_table_text(p)), dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("slide_id", "status") if c not in table.columns]
    if missing:
        raise GenomicsError(f"manifest {p}: missing column(s) {', '.join(missing)} (expected slide_id, status, ...)")
    if "reason" not in table.columns:
        table["reason"] = ""
    return table.set_index("slide_id", drop=False)


def usable_slides(
    patients: pd.DataFrame,
    all_cases: set[str],
    sheet: pd.DataFrame | None,
    manifest: pd.DataFrame | None,
    problems: Problems,
) -> dict[str, list[str]]:
    """Case id -> usable slide ids (see module doc); every gap is reported."""
    if sheet is None:
        if manifest is not None:
            problems.note("a manifest without a sample sheet is ignored (slides come from the table)")
        return {c: list(s) for c, s in patients["table_slide_ids"].items()}
    usable: dict[str, list[str]] = {c: [] for c in patients.index}
    for slide_id, case_id in zip(sheet.slide_id, sheet.case_id):
        if manifest is not None:
            if slide_id not in manifest.index:
                problems.add("not_in_manifest", f"slide {slide_id}: in the sample sheet but not in the manifest; not used")
                continue
            status = manifest.at[slide_id, "status"]
            if status != "ok":
                reason = manifest.at[slide_id, "reason"]
                problems.add("failed_slide", f"slide {slide_id} (case {case_id}): status {status!r} in the manifest ({reason}); not used")
                continue
        if case_id in usable:
            usable[case_id].append(slide_id)
        elif case_id in all_cases:
            problems.add("slide_no_label", f"slide {slide_id}: its case {case_id} was left out (no usable survival); slide not used")
        else:
            problems.add("slide_no_genomics", f"slide {slide_id}: its case {case_id} has no row in the cohort table; slide not used")
    _report_case_mismatch(patients, sheet, problems)
    for case_id, slides in usable.items():
        if not slides:
            listed = ", ".join(patients.at[case_id, "table_slide_ids"]) or "none"
            problems.add(
                "no_slide",
                f"patient {case_id}: genomics but no usable slide (table slides: {listed}); kept for "
                "genomics-only models, skipped by slide models",
            )
    return usable


def _report_case_mismatch(patients: pd.DataFrame, sheet: pd.DataFrame, problems: Problems) -> None:
    sheet_case = dict(zip(sheet.slide_id, sheet.case_id))
    for case_id, slides in patients["table_slide_ids"].items():
        for slide_id in slides:
            other = sheet_case.get(slide_id)
            if other is not None and other != case_id:
                problems.add(
                    "case_mismatch",
                    f"slide {slide_id}: case {case_id} in the cohort table but {other} in the sample sheet; "
                    "the sample sheet's case is used",
                )


# ----------------------------------------------------------------------------- folds


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


# ----------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class Inputs:
    cohort_table: Path
    signatures: Path | None = None
    splits_dir: Path | None = None
    samples: Path | None = None
    manifest: Path | None = None
    allow_shared_slide_files: bool = False  # one slide file under several slide ids (see sheet.py)


def _make_groups(signatures: Path | None, columns: list[str], problems: Problems) -> list[Group]:
    if signatures is None:
        groups, source = modality_groups(columns), "one group per modality (no group definition given)"
        problems.note(f"no group definition given: {source}")
    else:
        definition = read_definition(signatures)
        groups, empty = match_groups(definition, columns)
        source = definition.source
        for name in empty:
            problems.add("empty_group", f"group {name!r}: none of its genes has a column in the table; group left out")
    if not groups:
        raise GenomicsError(
            f"no group of {source} matches any genomic column of the table "
            "(columns must be named <GENE>_rnaseq, <GENE>_cnv or <GENE>_mut)"
        )
    return groups


def _folds(inputs: Inputs, settings: GenomicsSettings, patients: pd.DataFrame, problems: Problems) -> list[Fold]:
    if inputs.splits_dir is not None:
        folds = read_folds(inputs.splits_dir, list(patients.index), problems.lines)  # logged by run()
        if len(folds) != settings.n_folds:
            problems.note(f"{len(folds)} split files in {inputs.splits_dir} (genomics.n_folds = {settings.n_folds} is ignored)")
        return folds
    problems.note(f"made {settings.n_folds} stratified folds (seed {settings.fold_seed})")
    return make_folds(list(patients.index), patients["label"].tolist(), settings.n_folds, settings.fold_seed)


def run(inputs: Inputs, settings: GenomicsSettings, out_dir: str | Path) -> dict:
    """The whole stage; returns the summary written to ``out_dir/summary.json``."""
    problems = Problems()
    raw = read_cohort_table(inputs.cohort_table)
    log.info("cohort table %s: %d rows, %d columns", inputs.cohort_table, len(raw), raw.shape[1])
    columns, dropped = usable_columns(list(raw.columns), settings.convention)
    if dropped:
        problems.note(f"convention 'faithful': dropped the table's last genomic column {dropped[0]} (as the release does)")
    groups = _make_groups(inputs.signatures, columns, problems)
    used = sorted({c for g in groups for c in g.columns})

    patients = collapse_patients(raw, settings, problems)
    all_cases = set(patients.index)
    patients = valid_survival(patients, problems)
    report_genomic_conflicts(_clean_ids(raw, Problems()), patients.index, used, problems)
    matrix = numeric_matrix(patients, used, problems)
    check_missing(matrix, settings.max_missing_fraction)

    sheet = read_samples(inputs.samples, inputs.allow_shared_slide_files) if inputs.samples else None
    manifest = read_manifest(inputs.manifest) if inputs.manifest else None
    slides = usable_slides(patients, all_cases, sheet, manifest, problems)

    edges = bin_edges(patients.survival_months.to_numpy(), patients.censorship.to_numpy(), settings.n_bins)
    patients["bin"] = assign_bins(patients.survival_months.to_numpy(), edges)
    patients["label"] = class_labels(patients["bin"].to_numpy(), patients.censorship.to_numpy())
    patients["slide_ids"] = [";".join(slides[c]) for c in patients.index]

    n_problems_before = len(problems.lines)
    folds = _folds(inputs, settings, patients, problems)
    for line in problems.lines[n_problems_before:]:
        log.warning("%s", line)

    out = Path(out_dir)
    _check_out_dir(out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        fold_info = [_write_fold(tmp / f"fold{k}", fold, matrix, patients, groups, settings, problems, k) for k, fold in enumerate(folds)]
        table = patients[["case_id", "survival_months", "censorship", "bin", "label", "slide_ids"]]
        table.to_csv(tmp / "patients.csv", index=False)
        write_json(tmp / "groups.json", {
            "convention": settings.convention,
            "source": str(inputs.signatures) if inputs.signatures else "modalities",
            "dropped_columns": dropped,
            "groups": [{"name": g.name, "columns": list(g.columns)} for g in groups],
        })
        summary = _summary(inputs, settings, raw, patients, groups, edges, fold_info, dropped, problems)
        write_json(tmp / "summary.json", summary)
        write_text(tmp / "report.txt", render_report(summary, problems))
    log.info("genomics: %d patients, groups %s, %d folds -> %s (%d problem line(s), see report.txt)",
             len(patients), summary["groups"], len(folds), out, len(problems.lines))
    return summary


def _check_out_dir(out: Path) -> None:
    """Refuse to replace a folder that holds anything but this stage's outputs."""
    if not out.is_dir():
        return
    foreign = [p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES and not (p.is_dir() and p.name.startswith("fold"))]
    if foreign:
        raise GenomicsError(
            f"--out-dir {out} holds other files ({', '.join(sorted(foreign)[:5])}); it is replaced as a whole, "
            "so choose an empty folder or the run's genomics/ folder"
        )


def _write_fold(folder: Path, fold: Fold, matrix, patients, groups, settings, problems: Problems, k: int) -> dict:
    folder.mkdir()
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
    extreme = np.abs(scaled.to_numpy()) > EXTREME_Z
    if extreme.any():
        problems.note(
            f"fold {k}: {int(extreme.sum())} scaled value(s) beyond |z| > {EXTREME_Z:g} in {int(extreme.any(axis=0).sum())} "
            f"column(s) (columns nearly constant on the training patients; max |z| {np.abs(scaled.to_numpy()).max():.4g})"
        )
    write_json(folder / "split.json", {"train": list(fold.train), "val": list(fold.val)})
    write_parquet(folder / "genomics.parquet", scaled)
    write_json(folder / "scaler.json", {**scaler.to_json(), "n_train": len(fold.train)})
    write_json(folder / "targets.json", {"alpha": settings.ttest_alpha, "groups": targets})
    return {
        "train": len(fold.train),
        "val": len(fold.val),
        "imputed": n_imputed,
        "n_extreme_values": int(extreme.sum()),
        "targets": {name: len(cols) for name, cols in targets.items()},
        "n_low_risk": int(low.sum()),
        "n_high_risk": int(high.sum()),
    }


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """float32 columns, index ``case_id`` (pandas metadata kept, so ``pd.read_parquet`` restores it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = frame.astype(np.float32)
    out.index.name = "case_id"
    pq.write_table(pa.Table.from_pandas(out), path, use_dictionary=False, write_statistics=False)


def _summary(inputs, settings, raw, patients, groups, edges, fold_info, dropped, problems) -> dict:
    return {
        "n_patients": int(len(patients)),
        "n_table_rows": int(len(raw)),
        "groups": {g.name: len(g.columns) for g in groups},
        "n_features": len({c for g in groups for c in g.columns}),
        "bin_edges": [float(e) for e in edges],
        "n_bins": settings.n_bins,
        "bin_counts": np.bincount(patients["bin"], minlength=settings.n_bins).tolist(),
        "label_counts": np.bincount(patients["label"], minlength=2 * settings.n_bins).tolist(),
        "n_censored": int(patients.censorship.sum()),
        "n_without_slides": int((patients.slide_ids == "").sum()),
        "folds": [{"train": f["train"], "val": f["val"]} for f in fold_info],
        "fold_details": [{k: v for k, v in f.items() if k not in ("train", "val")} for f in fold_info],
        "fold_source": str(inputs.splits_dir) if inputs.splits_dir else f"stratified, seed {settings.fold_seed}",
        "convention": settings.convention,
        "dropped_columns": dropped,
        "cohort_table": str(inputs.cohort_table),
        "signatures": str(inputs.signatures) if inputs.signatures else None,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "problems": list(problems.lines),
        "notes": list(problems.notes),
        "package_version": __version__,
    }


def render_report(summary: dict, problems: Problems) -> str:
    lines = [
        "ghanet genomics report",
        f"cohort table: {summary['cohort_table']} ({summary['n_table_rows']} rows)",
        f"group definition: {summary['signatures'] or 'one group per modality'}; convention {summary['convention']}"
        + (f" (dropped {', '.join(summary['dropped_columns'])})" if summary["dropped_columns"] else ""),
        f"patients: {summary['n_patients']} ({summary['n_censored']} censored, {summary['n_without_slides']} without a usable slide)",
        "groups: " + ", ".join(f"{n} {s}" for n, s in summary["groups"].items()),
        "bin edges (months): " + ", ".join(f"{e:.2f}" for e in summary["bin_edges"]),
        "patients per bin: " + ", ".join(map(str, summary["bin_counts"])),
        "folds (train/val): " + ", ".join(f"{f['train']}/{f['val']}" for f in summary["folds"]) + f" ({summary['fold_source']})",
        "",
        f"problems ({len(problems.lines)}):",
        *[f"- {line}" for line in problems.lines],
        "",
        f"notes ({len(problems.notes)}):",
        *[f"- {line}" for line in problems.notes],
    ]
    return "\n".join(lines) + "\n"
