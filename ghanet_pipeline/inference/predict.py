"""Slide-only risk prediction per patient and attention heatmaps per slide (no genomics needed).

For every patient of the sample sheet the bag is every usable feature store of the patient's
slides (rows concatenated in sample-sheet order). Each fold model of ``infer.model`` (all folds,
or ``infer.fold``) predicts the survival curve S; the folds' S are averaged and
``risk = -sum(S)`` (the same as averaging the folds' risks). ``risk_group`` is ``high`` when the
risk is above the mean of the folds' ``train_median_risk`` (the training cohort's median, stored
in each checkpoint), else ``low``. A patient with no usable slide is kept with status
``missing`` and the reasons; slides that failed are named in ``reason`` even when others served.

Heatmaps come from the same forward passes, averaged over the same fold models (so each map
still sums to one over the patient's bag): the morphology attention E1 and, per gene family,
the association weights E2. A patient with several slides has one bag, so each slide's maps
hold its share of the bag's attention (``bag_mass`` in the store's attrs; 1 for one slide).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ghanet_pipeline.config import InferSettings
from ghanet_pipeline.contracts.features import FeatureStoreAttrs
from ghanet_pipeline.contracts.tiles import TilesStoreAttrs
from ghanet_pipeline.contracts.training import CheckpointMeta
from ghanet_pipeline.io.layout import FoldFiles, Layout, ModelFiles
from ghanet_pipeline.io.safe_text import neutralise_frame
from ghanet_pipeline.io.store import atomic_path, open_store, read_array
from ghanet_pipeline.runtime.devices import resolve_device
from ghanet_pipeline.survival.metrics import risk_from_survival
from ghanet_pipeline.training.bags import (
    EMPTY,
    MISSING,
    NOT_OK,
    UNREADABLE,
    SlideFeatures,
    UnusableStore,
    inspect_store,
    read_bag,
)

log = logging.getLogger(__name__)


class InferError(ValueError):
    """Checkpoints and feature stores cannot be used together, or none were found."""


@dataclass(frozen=True)
class SlideInput:
    """A slide of the sample sheet: its feature store when usable, else why not (``reason``)."""

    slide_id: str
    case_id: str
    slide_path: str
    store: Path
    reason: str = ""
    features: SlideFeatures | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.features is not None

    @property
    def n_patches(self) -> int:
        return self.features.n_patches if self.features else 0

    @property
    def dim(self) -> int:
        return self.features.dim if self.features else 0

    @property
    def encoder(self) -> str:
        return self.features.encoder if self.features else ""


@dataclass(frozen=True)
class FoldModel:
    fold: int
    path: Path
    model: object
    checkpoint: CheckpointMeta


# ----------------------------------------------------------------------------- inputs


def find_checkpoints(models_dir: Path, model: str, fold: int | None, which: str) -> list[Path]:
    """``{models_dir}/{model}/fold*/checkpoint_{which}.pt`` (or ``models_dir`` is the model folder)."""
    files = ModelFiles(models_dir / model if (models_dir / model).is_dir() else models_dir)
    if fold is not None:
        path = files.fold(fold).checkpoint(which)
        if not path.is_file():
            raise InferError(f"infer.fold = {fold}: no checkpoint {path}; train that fold or set infer.fold: null")
        return [path]
    found = [FoldFiles(folder).checkpoint(which) for folder in files.fold_dirs()]
    found = [path for path in found if path.is_file()]
    if not found:
        pattern = files.fold("*").checkpoint(which)
        raise InferError(f"no {pattern.name} under {pattern.parent}/: set infer.models_dir to the models/ folder of a "
                         f"run that trained '{model}' (or infer.model to a model it trained)")
    return found


def load_models(paths: list[Path], device: str) -> list[FoldModel]:
    from ghanet_pipeline.model import SLIDE_MODELS, load_fold_model

    models = []
    for path in paths:
        model, meta = load_fold_model(path, device=device)
        if meta.model not in SLIDE_MODELS:
            raise InferError(f"{path}: model '{meta.model}' does not read slides; slide-only inference needs one "
                             f"of {', '.join(SLIDE_MODELS)}")
        models.append(FoldModel(int(meta.fold) if meta.fold is not None else len(models), path, model, meta))
    names = {tuple(m.checkpoint.group_names or ()) for m in models}
    if len(names) > 1:
        raise InferError(f"fold checkpoints disagree on the gene families ({sorted(names)}); they are not one run's models")
    return models


def _status_reason(out_dir: Path, slide_id: str) -> str | None:
    """The reason recorded by the tissue stage in ``status/{slide}.json``, if it failed there."""
    from ghanet_pipeline.io.manifest import read_status

    path = Layout(out_dir).status(slide_id)
    if not path.is_file():
        return None
    record = read_status(path)
    return None if record.ok else f"tissue stage: {record.reason or 'failed'}"


def _unusable_reason(unusable: UnusableStore, out_dir: Path) -> str:
    """Why a slide serves no bag, as predictions.csv's ``reason`` says it."""
    u = unusable
    if u.problem == MISSING:
        return _status_reason(out_dir, u.slide_id) or f"no feature store at {u.path} (run the features stage for it)"
    return {
        UNREADABLE: f"unreadable feature store: {u.detail}",
        NOT_OK: u.detail or "failed in an earlier stage",
        EMPTY: f"feature store {u.path} holds no patches",
    }[u.problem]


def inspect_slide(row: pd.Series, features_dir: Path, out_dir: Path) -> SlideInput:
    slide_id, case_id = str(row["slide_id"]), str(row["case_id"])
    store = Layout.store_in(features_dir, slide_id)
    base = dict(slide_id=slide_id, case_id=case_id, slide_path=str(row["path"]), store=store)
    found = inspect_store(store, slide_id, with_coords=True)  # heatmaps need the coords
    if isinstance(found, UnusableStore):
        return SlideInput(**base, reason=_unusable_reason(found, out_dir))
    return SlideInput(**base, features=found)


def check_compatible(models: list[FoldModel], slides: list[SlideInput]) -> None:
    """Every usable feature store must come from the checkpoints' encoder, with their dimension."""
    from ghanet_pipeline.model import check_features

    for fm in models:
        for s in slides:
            if s.ok:
                check_features(fm.checkpoint, s.dim, f"feature store {s.store}", encoder=s.encoder,
                               checkpoint_path=fm.path)


# ----------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class PatientOutput:
    survival: np.ndarray  # (n_bins,) mean over folds
    morphology: np.ndarray  # (N,) mean over folds
    association: np.ndarray  # (G, N) mean over folds (G = 0 without association)


def predict_bag(models: list[FoldModel], bag: np.ndarray, device: str) -> PatientOutput:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(bag, dtype=np.float32)).to(device)
    surv, morph, assoc = [], [], []
    with torch.inference_mode():
        for fm in models:
            out = fm.model(x, return_attention=True)
            surv.append(out["S"].float().cpu().numpy().reshape(-1))
            morph.append(out["morphology"].float().cpu().numpy().reshape(-1))
            a = out.get("association")
            assoc.append(np.zeros((0, bag.shape[0]), np.float32) if a is None else a.float().cpu().numpy())
    return PatientOutput(np.mean(surv, axis=0), np.mean(morph, axis=0), np.mean(assoc, axis=0))


def read_features(slides: list[SlideInput]) -> np.ndarray:
    """The bag of usable slides; a damaged store raises :class:`DamagedStoreError` (never reads as zeros)."""
    return read_bag([s.features for s in slides])


def median_threshold(models: list[FoldModel]) -> float | None:
    values = [m.checkpoint.train_median_risk for m in models]
    if any(v is None for v in values):
        log.warning("a checkpoint has no train_median_risk: risk_group is left empty")
        return None
    return float(np.mean([float(v) for v in values]))


# ----------------------------------------------------------------------------- heatmap inputs


@dataclass(frozen=True)
class SlideGeometry:
    patch_size_level0: int
    level0_size: tuple[int, int]
    source: str  # "tiles store", "feature store and slide", or "estimated from coords"

    @property
    def known(self) -> bool:
        return self.source != ESTIMATED


ESTIMATED = "estimated from coords"


def _tiles_store_geometry(path: Path) -> SlideGeometry | None:
    """The geometry recorded in a tiles store; None when it is absent, unreadable or has none."""
    try:
        tiles = TilesStoreAttrs.from_attrs(dict(open_store(path).attrs), source=path)
        if tiles.level0_size is None or tiles.patch_size_level0 is None:
            return None
        size = (int(tiles.level0_size[0]), int(tiles.level0_size[1]))
        return SlideGeometry(int(tiles.patch_size_level0), size, "tiles store")
    except (FileNotFoundError, KeyError, OSError, ValueError, TypeError):  # damage and bad records are ValueErrors
        return None


def slide_geometry(features: FeatureStoreAttrs, tiles_dir: Path, slide_id: str, coords: np.ndarray,
                   slide_path: str) -> SlideGeometry:
    """Patch size in level-0 px and the level-0 size: from the tiles store named in the feature store's
    attributes (else ``tiles_dir/{slide}.zarr``); for imported features (no tiles store), from the feature
    store's ``patch_size_level0`` and the slide file; else estimated from the coordinate grid."""
    candidates = [Path(str(features.tiles_store))] if features.tiles_store else []
    candidates.append(Layout.store_in(tiles_dir, slide_id))
    for path in candidates:
        geometry = _tiles_store_geometry(path)
        if geometry is not None:
            return geometry
    if features.patch_size_level0:
        from ghanet_pipeline.slides.slide import SlideError, open_slide

        try:
            with open_slide(slide_path) as slide:
                size = tuple(int(v) for v in slide.dimensions)
            return SlideGeometry(int(features.patch_size_level0), size, "feature store and slide")
        except SlideError as err:
            log.info("%s: slide not readable for the heatmap picture (%s)", slide_id, err)
    xs = np.unique(coords[:, 0])
    step = int(np.diff(xs).min()) if xs.size > 1 else 256
    far = coords.max(axis=0) + step if len(coords) else np.array([step, step])
    return SlideGeometry(step, (int(far[0]), int(far[1])), ESTIMATED)


def slide_attention(patient: list[SlideInput], output: PatientOutput, models: list[FoldModel],
                    tiles_dir: Path) -> list:
    from ghanet_pipeline.inference.heatmaps import SlideAttention, group_names_from

    names = group_names_from(models[0].checkpoint.group_names, output.association.shape[0])
    described = tuple(f"{m.checkpoint.model}/fold{m.fold}/{m.path.name}" for m in models)
    bag_slides = tuple(s.slide_id for s in patient)
    result, start = [], 0
    for s in patient:
        rows = slice(start, start + s.n_patches)
        start += s.n_patches
        coords = read_array(s.features.group, "coords", slide_id=s.slide_id, store_path=s.store)
        coords = coords.astype(np.int64, copy=False)
        if coords.shape[0] != s.n_patches:
            raise InferError(f"{s.store}: coords has {coords.shape[0]} rows but features {s.n_patches}; "
                             "re-run the features stage for this slide")
        geometry = slide_geometry(s.features.attrs, tiles_dir, s.slide_id, coords, s.slide_path)
        result.append(SlideAttention(
            slide_id=s.slide_id, case_id=s.case_id, coords=coords,
            morphology=output.morphology[rows].astype(np.float32),
            association=output.association[:, rows].astype(np.float32),
            group_names=names, patch_size_level0=geometry.patch_size_level0, level0_size=geometry.level0_size,
            models=described, bag_slides=bag_slides,
            extra_attrs={"fold_average": len(models) > 1, "encoder": s.encoder, "geometry": geometry.source},
        ))
    return result


# ----------------------------------------------------------------------------- the stage


def run(samples: pd.DataFrame, models_dir: Path, features_dir: Path, out_dir: Path, settings: InferSettings,
        tiles_dir: Path | None = None) -> pd.DataFrame:
    """Predict every patient of ``samples``; write predictions.csv and heatmaps/; return the table."""
    from tqdm import tqdm

    layout = Layout(out_dir)
    device = resolve_device(settings.device, "infer.device")
    models = load_models(find_checkpoints(models_dir, settings.model, settings.fold, settings.checkpoint), device)
    slides = [inspect_slide(row, features_dir, out_dir) for _, row in samples.iterrows()]
    check_compatible(models, slides)
    threshold = median_threshold(models)
    n_bins = int((models[0].checkpoint.model_config or {}).get("n_bins") or 0) or None
    folds_used = ";".join(str(m.fold) for m in models)
    tiles_dir = tiles_dir or layout.tiles_dir
    by_case: dict[str, list[SlideInput]] = {}
    for s in slides:
        by_case.setdefault(s.case_id, []).append(s)

    rows = []
    with atomic_path(layout.heatmaps_dir) as heat_dir:
        heat_dir.mkdir(parents=True)
        for case_id, patient in tqdm(by_case.items(), desc="patients", unit="patient", mininterval=5):
            row, output = predict_patient(case_id, patient, models, device, threshold, folds_used)
            rows.append(row)
            if output is None:
                continue
            n_bins = n_bins or len(output.survival)
            write_heatmaps(heat_dir, [s for s in patient if s.ok], output, models, tiles_dir, settings.top_k)
        table = predictions_table(rows, n_bins or 0)
        write_predictions(layout.predictions, table)
    n_missing = int((table["status"] == "missing").sum())
    log.info("predicted %d patients (%d missing) with %s fold(s) %s", len(table), n_missing, settings.model, folds_used)
    return table


def predict_patient(case_id: str, patient: list[SlideInput], models: list[FoldModel], device: str,
                    threshold: float | None, folds_used: str) -> tuple[dict, PatientOutput | None]:
    """The patient's row of predictions.csv, and the forward passes' output (None: no usable slide)."""
    from ghanet_pipeline.survival import km

    usable = [s for s in patient if s.ok]
    failed = "; ".join(f"slide {s.slide_id}: {s.reason}" for s in patient if not s.ok)
    row = {"case_id": case_id, "slide_ids": ";".join(s.slide_id for s in patient),
           "slides_used": ";".join(s.slide_id for s in usable)}
    if not usable:
        log.warning("patient %s: missing (%s)", case_id, failed)
        return {**row, "status": "missing", "reason": failed or "no slides", "folds_used": ""}, None
    output = predict_bag(models, read_features(usable), device)
    risk = float(risk_from_survival(output.survival))
    group = "" if threshold is None else str(km.split_at(risk, threshold))
    return {**row, "status": "ok", "reason": failed, "risk": risk,
            **{f"S_{i}": float(v) for i, v in enumerate(output.survival)},
            "risk_group": group, "folds_used": folds_used}, output


def write_heatmaps(heat_dir: Path, usable: list[SlideInput], output: PatientOutput, models: list[FoldModel],
                   tiles_dir: Path, top_k: int) -> None:
    from ghanet_pipeline.inference import heatmaps

    for data in slide_attention(usable, output, models, tiles_dir):
        if data.extra_attrs["geometry"] == ESTIMATED:  # no tiles store, no readable slide
            log.warning("%s: heatmap arrays and GeoJSON only (no picture): patch geometry unknown; "
                        "it needs the tiles store, or the slide file and the features' patch_size_level0",
                        data.slide_id)
            heatmaps.write_all(heat_dir, data, None, top_k)
        else:
            heatmaps.write_all(heat_dir, data, data_slide_path(usable, data.slide_id), top_k)


def data_slide_path(patient: list[SlideInput], slide_id: str) -> str:
    return next(s.slide_path for s in patient if s.slide_id == slide_id)


PREDICTION_COLUMNS = ("case_id", "slide_ids", "slides_used", "status", "reason", "risk")


def predictions_table(rows: list[dict], n_bins: int) -> pd.DataFrame:
    columns = [*PREDICTION_COLUMNS, *(f"S_{i}" for i in range(n_bins)), "risk_group", "folds_used"]
    return pd.DataFrame(rows).reindex(columns=columns)


def write_predictions(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        neutralise_frame(table).to_csv(tmp, index=False, float_format="%.6g")
