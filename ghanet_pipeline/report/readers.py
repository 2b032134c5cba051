"""What the report reads: one reader per stage output, every path from :class:`Layout`.

Readers never fail the report on a missing output: they return empty frames or ``None`` and the
page says what is absent. Nothing here writes HTML (that is :mod:`ghanet_pipeline.report.html`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ghanet_pipeline.contracts.features import FeatureStoreAttrs
from ghanet_pipeline.contracts.training import FoldResult, ModelSummary
from ghanet_pipeline.io.layout import FoldFiles, Layout, ModelFiles, UnsafeIdError
from ghanet_pipeline.io.manifest import slide_status_table

log = logging.getLogger(__name__)

# Columns of a fold's metrics.csv (train.py); older runs have fewer, and any may be absent.
CURVE_COLUMNS = ("epoch", "loss", "nll", "recon", "val_loss", "val_cindex", "train_cindex", "lr", "seconds")


# ----------------------------------------------------------------------------- the run


def parse_run_config(text: str | None) -> dict | None:
    """``--run-config``: JSON text, or the path of a JSON/YAML file."""
    if not text:
        return None
    stripped = text.strip()
    if not stripped.startswith("{"):
        path = Path(stripped)
        if not path.is_file():
            raise SystemExit(f"--run-config: {stripped!r} is neither JSON text nor an existing file")
        from ghanet_pipeline.config import read_yaml

        return read_yaml(path)  # YAML is a superset of JSON
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--run-config is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise SystemExit("--run-config must be a JSON object (the whole run configuration)")
    return value


def sheet_cases(run_config: dict | None) -> dict[str, str] | None:
    """slide_id -> case_id from the run's sample sheet (per the run config); None when unknown."""
    sheet_path = None
    if run_config:
        demo = run_config.get("demo") or {}
        sheet_path = run_config.get("samples") or (
            str(Path(demo.get("dir", "demo_data")) / "samples.csv") if demo.get("enabled") else None)
    if sheet_path and Path(sheet_path).is_file():
        try:
            from ghanet_pipeline.io.sheet import read_samples

            table = read_samples(sheet_path, allow_shared_files=bool(run_config.get("allow_shared_slide_files")))
            return dict(zip(table.slide_id, table.case_id))
        except Exception as err:  # noqa: BLE001 - case ids are a convenience here
            log.warning("cannot read the sample sheet %s for case ids: %s", sheet_path, err)
    return None


def run_slide_ids(run_config: dict | None) -> set[str] | None:
    """The slides of this run (its sample sheet); None when the run config does not say."""
    cases = sheet_cases(run_config)
    return None if cases is None else set(cases)


def slide_cases(out: Path, run_config: dict | None) -> dict[str, str]:
    """slide_id -> case_id from the run's sample sheet (per the run config), else from predictions.csv."""
    cases = sheet_cases(run_config)
    if cases is not None:
        return cases
    mapping: dict[str, str] = {}
    predictions = read_predictions(out)
    if predictions is not None:
        for case_id, slides in zip(predictions.get("case_id", []), predictions.get("slide_ids", [])):
            for slide in str(slides).split(";"):
                if slide:
                    mapping[slide] = case_id
    return mapping


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


# ----------------------------------------------------------------------------- tissue


def read_slide_status(out: Path) -> pd.DataFrame:
    """One row per slide from ``status/*.json`` (the source of ``manifest.csv``), else the manifest."""
    return slide_status_table(out)


def qc_pictures(out: Path, slides: set[str] | None) -> list[Path]:
    """``qc/{slide}.png`` of the run's slides (all when the run's sheet is unknown)."""
    return sorted(p for p in Layout(out).qc_dir.glob("*.png") if slides is None or p.stem in slides)


# ----------------------------------------------------------------------------- features


def _feature_stores(out: Path) -> list[Path]:
    return sorted(Layout(out).features_root.glob("*/*.zarr"))


def _store_attrs(store: Path) -> FeatureStoreAttrs:
    from ghanet_pipeline.io.store import open_store

    return FeatureStoreAttrs.from_attrs(dict(open_store(store).attrs), source=store)


def read_feature_status(out: Path) -> pd.DataFrame:
    """``slide_id, encoder, features_status, features_reason`` from the feature stores' attributes."""
    rows = []
    for store in _feature_stores(out):
        try:
            attrs = _store_attrs(store)
        except Exception as err:  # a broken store is reported, not fatal
            rows.append({"slide_id": store.stem, "encoder": store.parent.name, "features_status": "unreadable",
                         "features_reason": str(err)})
            continue
        rows.append({
            "slide_id": str(attrs.slide_id if attrs.slide_id is not None else store.stem),
            "encoder": str(attrs.encoder if attrs.encoder is not None else store.parent.name),
            "features_status": str(attrs.status),
            "features_reason": str(attrs.reason),
        })
    return pd.DataFrame(rows)


def first_feature_attrs(out: Path) -> dict[str, FeatureStoreAttrs]:
    """Attributes of the first ok feature store of each encoder folder."""
    found: dict[str, FeatureStoreAttrs] = {}
    for folder in sorted(p for p in Layout(out).features_root.glob("*") if p.is_dir()):
        for store in sorted(folder.glob("*.zarr")):
            try:
                attrs = _store_attrs(store)
            except Exception:
                continue
            if attrs.status == "ok":
                found[folder.name] = attrs
                break
    return found


# ----------------------------------------------------------------------------- genomics


def read_genomics_summary(out: Path) -> dict | None:
    return read_json(Layout(out).genomics.summary)


# ----------------------------------------------------------------------------- training


def run_model_dirs(out: Path, run_config: dict | None) -> list[Path]:
    """``models/{model}`` folders this run made: those of its ``train.models`` (all, without a run config).
    The report lists only what the run made, never other folders that happen to sit there."""
    dirs = sorted(p for p in Layout(out).models_dir.glob("*") if p.is_dir())
    wanted = ((run_config or {}).get("train") or {}).get("models")
    return dirs if wanted is None else [p for p in dirs if p.name in set(wanted)]


def fold_dirs(model_dir: Path) -> list[tuple[int, Path]]:
    return [(int(p.name[4:]), p) for p in ModelFiles(model_dir).fold_dirs()]


def read_fold_result(fold_dir: Path) -> FoldResult | None:
    """``result.json`` of a fold; None while the fold has not finished."""
    path = FoldFiles(fold_dir).result
    attrs = read_json(path)
    return None if attrs is None else FoldResult.from_attrs(attrs, source=path)


def read_model_summary(model_dir: Path) -> ModelSummary | None:
    files = ModelFiles(model_dir)
    attrs = read_json(files.summary)
    return None if attrs is None else ModelSummary.from_attrs(attrs, source=files.summary)


@dataclass(frozen=True)
class ModelResults:
    model: str
    summary: ModelSummary | None
    folds: list[tuple[int, FoldResult | None]]


def read_model_results(out: Path, run_config: dict | None = None) -> list[ModelResults]:
    """Per model of the run: its summary and each fold's result (None: not finished)."""
    return [
        ModelResults(d.name, read_model_summary(d), [(fold, read_fold_result(f)) for fold, f in fold_dirs(d)])
        for d in run_model_dirs(out, run_config)
    ]


def train_median_risk(fold_dir: Path) -> float | None:
    """``train_median_risk`` from the fold's ``result.json`` (train writes the final model's value), or None."""
    path = FoldFiles(fold_dir).result
    try:
        result = read_fold_result(fold_dir)
        value = result.train_median_risk if result is not None else None
        if value is not None and math.isfinite(float(value)):
            return float(value)
    except Exception as err:  # noqa: BLE001 - the fallback is stated in the report
        log.warning("%s: cannot read train_median_risk (%s); using the median of val risks", path, err)
    return None


def read_curves(model_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every fold's ``metrics.csv`` stacked (``fold`` added; missing columns absent, not invented),
    and a note per fold that has none or an unreadable one."""
    frames, notes = [], []
    for fold, fold_dir in fold_dirs(model_dir):
        path = FoldFiles(fold_dir).metrics
        if not path.is_file():
            notes.append(f"fold {fold}: no metrics.csv (an older run, or training has not started)")
            continue
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            notes.append(f"fold {fold}: metrics.csv is not readable ({type(err).__name__}: {err})")
            continue
        known = [c for c in CURVE_COLUMNS if c in frame.columns]
        frame = frame[known].apply(pd.to_numeric, errors="coerce")
        if "epoch" not in frame.columns:
            frame["epoch"] = np.arange(1, len(frame) + 1)
        frame = frame.dropna(subset=["epoch"])
        if frame.empty:
            notes.append(f"fold {fold}: metrics.csv has no epochs")
            continue
        frame["fold"] = fold
        frames.append(frame)
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), notes


def held_out_groups(model_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Pooled held-out predictions of every fold, each split high/low at a stated threshold."""
    from ghanet_pipeline.survival import km

    frames, notes = [], []
    for fold, fold_dir in fold_dirs(model_dir):
        path = FoldFiles(fold_dir).predictions
        if not path.is_file():
            continue
        pred = pd.read_csv(path, dtype={"case_id": str})
        pred = pred[np.isfinite(pd.to_numeric(pred["risk"], errors="coerce"))]
        if pred.empty:
            continue
        threshold = train_median_risk(fold_dir)
        if threshold is None:
            threshold = float(pred["risk"].median())
            notes.append(f"fold {fold}: median of its held-out risks ({threshold:.4g}; no train_median_risk in result.json)")
        else:
            notes.append(f"fold {fold}: training median risk from result.json ({threshold:.4g})")
        pred["risk_group"] = km.split_at(pred["risk"].to_numpy(float), threshold)
        pred["fold"] = fold
        frames.append(pred)
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), notes


# ----------------------------------------------------------------------------- inference


def read_predictions(out: Path) -> pd.DataFrame | None:
    """``predictions.csv`` as text cells; None when inference did not run."""
    path = Layout(out).predictions
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else None


def heatmap_pictures(out: Path, slides: set[str] | None) -> list[tuple[Path, Path | None]]:
    """(``heatmaps/{slide}.png``, its ``_topk.png`` or None) of the run's slides."""
    layout = Layout(out)
    maps = sorted(p for p in layout.heatmaps_dir.glob("*.png")
                  if not p.stem.endswith("_topk") and (slides is None or p.stem in slides))
    return [(png, _topk_picture(layout, png.stem)) for png in maps]


def _topk_picture(layout: Layout, slide_id: str) -> Path | None:
    try:
        path = layout.heatmap_topk(slide_id)
    except UnsafeIdError:  # a stray file in heatmaps/, not a slide of the run
        return None
    return path if path.is_file() else None


# ----------------------------------------------------------------------------- workflow records


def read_benchmarks(out: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted(Layout(out).benchmarks_dir.glob("*/*.tsv")):
        try:
            frame = pd.read_csv(tsv, sep="\t")
        except Exception as err:  # noqa: BLE001
            log.warning("%s: unreadable benchmark (%s)", tsv, err)
            continue
        if "s" not in frame.columns or frame.empty:
            continue
        rss = pd.to_numeric(frame.get("max_rss", pd.Series(dtype=float)), errors="coerce")
        rows.append({"rule": tsv.parent.name, "job": tsv.stem, "s": float(pd.to_numeric(frame["s"], errors="coerce").mean()),
                     "max_rss_mb": float(rss.max()) if len(rss) else float("nan")})
    return pd.DataFrame(rows)

