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

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ghanet_pipeline.config import GenomicsSettings
from ghanet_pipeline.genomics import outputs
from ghanet_pipeline.genomics.fitting import fit_fold
from ghanet_pipeline.genomics.folds import Fold, make_folds, read_folds
from ghanet_pipeline.genomics.groups import (
    Group,
    match_groups,
    modality_groups,
    read_definition,
    usable_columns,
)
from ghanet_pipeline.genomics.patients import (
    clean_ids,
    collapse_patients,
    valid_survival,
)
from ghanet_pipeline.genomics.problems import GenomicsError, Problems
from ghanet_pipeline.genomics.slide_joins import usable_slides
from ghanet_pipeline.genomics.table import (
    REQUIRED_COLUMNS,
    parse_cohort_text,
    read_cohort_table,
)
from ghanet_pipeline.genomics.values import (
    HUGE,
    check_missing,
    numeric_matrix,
    report_genomic_conflicts,
)
from ghanet_pipeline.io.layout import GenomicsFiles
from ghanet_pipeline.io.manifest import read_manifest
from ghanet_pipeline.io.sheet import read_samples
from ghanet_pipeline.io.store import atomic_path
from ghanet_pipeline.survival.labels import assign_bins, bin_edges, class_labels

log = logging.getLogger(__name__)

# The stage's entry points; the table reader and its error are used by other stages' checks too.
__all__ = ["GenomicsError", "HUGE", "Inputs", "Problems", "REQUIRED_COLUMNS", "parse_cohort_text",
           "read_cohort_table", "run"]


@dataclass(frozen=True)
class Inputs:
    cohort_table: Path
    signatures: Path | None = None
    splits_dir: Path | None = None
    samples: Path | None = None
    manifest: Path | None = None
    allow_shared_slide_files: bool = False  # one slide file under several slide ids (see sheet.py)


@dataclass
class Cohort:
    """The table as read and what the flow made of it, before folds."""

    raw: pd.DataFrame
    groups: list[Group]
    dropped: list[str]
    patients: pd.DataFrame
    matrix: pd.DataFrame
    edges: np.ndarray


def run(inputs: Inputs, settings: GenomicsSettings, out_dir: str | Path) -> dict:
    """The whole stage; returns the summary written to ``out_dir/summary.json``."""
    problems = Problems()
    cohort = read_cohort(inputs, settings, problems)
    n_problems_before = len(problems.lines)
    folds = _folds(inputs, settings, cohort.patients, problems)
    for line in problems.lines[n_problems_before:]:  # read_folds only appends them
        log.warning("%s", line)
    files = GenomicsFiles(Path(out_dir))
    summary = _write(files, inputs, settings, cohort, folds, problems)
    log.info("genomics: %d patients, groups %s, %d folds -> %s (%d problem line(s), see report.txt)",
             len(cohort.patients), summary["groups"], len(folds), files.dir, len(problems.lines))
    return summary


def read_cohort(inputs: Inputs, settings: GenomicsSettings, problems: Problems) -> Cohort:
    """Groups, one labelled row per patient with its usable slides, and the genomic matrix."""
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
    report_genomic_conflicts(clean_ids(raw, Problems()), patients.index, used, problems)
    matrix = numeric_matrix(patients, used, problems)
    check_missing(matrix, settings.max_missing_fraction)

    sheet = read_samples(inputs.samples, inputs.allow_shared_slide_files) if inputs.samples else None
    manifest = read_manifest(inputs.manifest).set_index("slide_id", drop=False) if inputs.manifest else None
    slides = usable_slides(patients, all_cases, sheet, manifest, problems)

    edges = bin_edges(patients.survival_months.to_numpy(), patients.censorship.to_numpy(), settings.n_bins)
    patients["bin"] = assign_bins(patients.survival_months.to_numpy(), edges)
    patients["label"] = class_labels(patients["bin"].to_numpy(), patients.censorship.to_numpy())
    patients["slide_ids"] = [";".join(slides[c]) for c in patients.index]
    return Cohort(raw, groups, dropped, patients, matrix, edges)


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
        folds = read_folds(inputs.splits_dir, list(patients.index), problems.lines)
        if len(folds) != settings.n_folds:
            problems.note(f"{len(folds)} split files in {inputs.splits_dir} (genomics.n_folds = {settings.n_folds} is ignored)")
        return folds
    problems.note(f"made {settings.n_folds} stratified folds (seed {settings.fold_seed})")
    return make_folds(list(patients.index), patients["label"].tolist(), settings.n_folds, settings.fold_seed)


def _write(files: GenomicsFiles, inputs: Inputs, settings: GenomicsSettings, cohort: Cohort, folds: list[Fold],
           problems: Problems) -> dict:
    """Fit and write every fold, then the cohort files, into a folder that replaces ``files.dir`` whole."""
    outputs.check_out_dir(files)
    with atomic_path(files.dir) as tmp:
        tmp.mkdir(parents=True)
        staged = GenomicsFiles(tmp)
        fold_info = []
        for k, fold in enumerate(folds):
            fitted = fit_fold(k, fold, cohort.matrix, cohort.patients, cohort.groups, settings, problems)
            outputs.write_fold(staged.fold(k), fitted, settings.ttest_alpha)
            fold_info.append(fitted.info)
        outputs.write_patients(staged, cohort.patients)
        outputs.write_groups(staged, settings, inputs.signatures, cohort.groups, cohort.dropped)
        summary = outputs.summary_of(inputs, settings, cohort.raw, cohort.patients, cohort.groups, cohort.edges,
                                     fold_info, cohort.dropped, problems)
        outputs.write_summary_and_report(staged, summary, problems)
    return summary
