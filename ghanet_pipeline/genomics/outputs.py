"""What the genomics stage writes: per-fold files, patients, groups, summary and report.txt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ghanet_pipeline import __version__
from ghanet_pipeline.config import GenomicsSettings
from ghanet_pipeline.genomics.folds import Fold
from ghanet_pipeline.genomics.groups import Group
from ghanet_pipeline.genomics.problems import GenomicsError, Problems
from ghanet_pipeline.genomics.scaling import Scaler
from ghanet_pipeline.io.layout import GenomicsFiles, GenomicsFoldFiles
from ghanet_pipeline.io.store import write_json, write_text

PATIENT_COLUMNS = ["case_id", "survival_months", "censorship", "bin", "label", "slide_ids"]


@dataclass(frozen=True)
class FittedFold:
    """One fold's scaler, scaled table and targets, and the counts its summary reports."""

    fold: Fold
    scaler: Scaler
    scaled: pd.DataFrame
    targets: dict[str, list[str]]
    info: dict


def check_out_dir(files: GenomicsFiles) -> None:
    """Refuse to replace a folder that holds anything but this stage's outputs."""
    out = files.dir
    if not out.is_dir():
        return
    own = {files.patients.name, files.groups.name, files.summary.name, files.problems.name}
    foreign = [p.name for p in out.iterdir() if p.name not in own and not (p.is_dir() and p.name.startswith("fold"))]
    if foreign:
        raise GenomicsError(
            f"--out-dir {out} holds other files ({', '.join(sorted(foreign)[:5])}); it is replaced as a whole, "
            "so choose an empty folder or the run's genomics/ folder"
        )


def write_fold(files: GenomicsFoldFiles, fitted: FittedFold, alpha: float) -> None:
    files.dir.mkdir()
    write_json(files.split, {"train": list(fitted.fold.train), "val": list(fitted.fold.val)})
    write_parquet(files.table, fitted.scaled)
    write_json(files.scaler, {**fitted.scaler.to_json(), "n_train": len(fitted.fold.train)})
    write_json(files.targets, {"alpha": alpha, "groups": fitted.targets})


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """float32 columns, index ``case_id`` (pandas metadata kept, so ``pd.read_parquet`` restores it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = frame.astype(np.float32)
    out.index.name = "case_id"
    pq.write_table(pa.Table.from_pandas(out), path, use_dictionary=False, write_statistics=False)


def write_patients(files: GenomicsFiles, patients: pd.DataFrame) -> None:
    patients[PATIENT_COLUMNS].to_csv(files.patients, index=False)


def write_groups(files: GenomicsFiles, settings: GenomicsSettings, signatures: Path | None, groups, dropped) -> None:
    write_json(files.groups, {
        "convention": settings.convention,
        "source": str(signatures) if signatures else "modalities",
        "dropped_columns": dropped,
        "groups": [{"name": g.name, "columns": list(g.columns)} for g in groups],
    })


def write_summary_and_report(files: GenomicsFiles, summary: dict, problems: Problems) -> None:
    write_json(files.summary, summary)
    write_text(files.problems, render_report(summary, problems))


def summary_of(inputs, settings: GenomicsSettings, raw: pd.DataFrame, patients: pd.DataFrame, groups: list[Group],
               edges: np.ndarray, fold_info: list[dict], dropped: list[str], problems: Problems) -> dict:
    """``summary.json`` (``inputs``: the stage's :class:`~ghanet_pipeline.genomics.preprocess.Inputs`)."""
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
    """``report.txt``: the summary in a few lines, then every problem and note."""
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
