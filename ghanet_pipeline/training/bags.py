"""Patient bags from Zarr feature stores: every usable slide of a patient, concatenated.

``find_patient_stores`` decides which patients have features (others are excluded with a
reason); ``BagSource`` serves a patient's bag as a float32 tensor, from an in-memory cache when
the cohort fits in the budget (kept in the stores' dtype, float16 stays float16), otherwise
streamed from the stores on every request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from ghanet_pipeline.io.store import (
    DamagedStoreError,
    has_integrity,
    open_store,
    read_array,
    require_array,
)

log = logging.getLogger(__name__)


class FeatureStoreError(ValueError):
    """Feature stores of one cohort disagree (dimension, encoder)."""


@dataclass(frozen=True)
class SlideFeatures:
    slide_id: str
    path: Path
    n_patches: int
    dim: int
    itemsize: int
    encoder: str


@dataclass(frozen=True)
class CohortFeatures:
    stores: dict[str, list[SlideFeatures]]  # case_id -> usable slides (>= 1)
    excluded: list[dict[str, str]]  # {"case_id", "reason"}
    dim: int
    encoder: str


def _inspect(path: Path, slide_id: str) -> tuple[SlideFeatures | None, str]:
    if not path.exists():
        return None, f"slide {slide_id}: no feature store at {path}"
    try:
        group = open_store(path)
    except DamagedStoreError:  # a finished store that lost files is a broken run output, not a bad slide
        raise
    except (FileNotFoundError, ValueError, OSError) as err:
        return None, f"slide {slide_id}: unreadable feature store ({err})"
    attrs = dict(group.attrs)
    status = str(attrs.get("status", "ok"))
    if status != "ok":
        return None, f"slide {slide_id}: feature store status '{status}' ({attrs.get('reason', '')})"
    arr = require_array(group, "features", slide_id=slide_id, store_path=path)
    if not has_integrity(arr):
        log.warning("slide %s: feature store %s predates integrity records: only missing chunks are detected; "
                    "rebuild it to add checksums", slide_id, path)
    if arr.ndim != 2 or arr.shape[0] == 0:
        return None, f"slide {slide_id}: feature store {path} holds no patches (shape {arr.shape})"
    return SlideFeatures(slide_id, path, int(arr.shape[0]), int(arr.shape[1]), arr.dtype.itemsize,
                         str(attrs.get("encoder", ""))), ""


def find_patient_stores(slides_by_case: Mapping[str, Iterable[str]], features_dir: str | Path) -> CohortFeatures:
    """Map every patient to its usable feature stores ``features_dir/{slide_id}.zarr``."""
    features_dir = Path(features_dir)
    stores: dict[str, list[SlideFeatures]] = {}
    excluded: list[dict[str, str]] = []
    dims: dict[int, Path] = {}
    encoders: dict[str, Path] = {}
    for case_id, slide_ids in slides_by_case.items():
        usable, reasons = [], []
        for slide_id in slide_ids:
            found, reason = _inspect(features_dir / f"{slide_id}.zarr", slide_id)
            if found is None:
                reasons.append(reason)
                continue
            usable.append(found)
            dims.setdefault(found.dim, found.path)
            encoders.setdefault(found.encoder, found.path)
        if reasons:
            log.warning("patient %s: %s", case_id, "; ".join(reasons))
        if usable:
            stores[case_id] = usable
        else:
            why = "; ".join(reasons) or "no slides listed for the patient"
            excluded.append({"case_id": case_id, "reason": f"no usable features: {why}"})
    if len(dims) > 1:
        (d1, p1), (d2, p2) = list(dims.items())[:2]
        raise FeatureStoreError(
            f"feature stores of different dimensions in {features_dir}: {p1} has {d1}-d, {p2} has {d2}-d; "
            "extract every slide with the same encoder"
        )
    if len(encoders) > 1:
        (e1, p1), (e2, p2) = list(encoders.items())[:2]
        raise FeatureStoreError(f"feature stores from different encoders: {p1} ({e1}) and {p2} ({e2})")
    dim = next(iter(dims), 0)
    return CohortFeatures(stores, excluded, dim, next(iter(encoders), ""))


def available_memory_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil ships with the venv
        return 4 << 30


def _read_bag(slides: list[SlideFeatures]) -> np.ndarray:
    """The patient's bag; a damaged store raises :class:`DamagedStoreError` (never reads as zeros)."""
    parts = [read_array(open_store(s.path), "features", slide_id=s.slide_id, store_path=s.path) for s in slides]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


class BagSource:
    """Patient bags by case id; cached in memory when they fit ``cache_bytes`` (None = half of free RAM)."""

    def __init__(self, stores: Mapping[str, list[SlideFeatures]], cache_bytes: int | None = None) -> None:
        self.stores = dict(stores)
        total = sum(s.n_patches * s.dim * s.itemsize for slides in self.stores.values() for s in slides)
        budget = available_memory_bytes() // 2 if cache_bytes is None else int(cache_bytes)
        self.in_memory = total <= budget
        self.cache: dict[str, np.ndarray] = {}
        log.info("patient bags: %d patients, %.2f GB of features, %s (budget %.2f GB)", len(self.stores),
                 total / 1e9, "cached in memory" if self.in_memory else "streamed from the stores", budget / 1e9)
        if self.in_memory:
            for case_id in tqdm(sorted(self.stores), desc="loading features", unit="patient", mininterval=5):
                self.cache[case_id] = _read_bag(self.stores[case_id])

    def __contains__(self, case_id: str) -> bool:
        return case_id in self.stores

    def n_patches(self, case_id: str) -> int:
        return sum(s.n_patches for s in self.stores[case_id])

    def get(self, case_id: str, rows: np.ndarray | None = None) -> torch.Tensor:
        """The bag (N, D) as float32; ``rows`` picks a subset (sorted row indices)."""
        bag = self.cache.get(case_id)
        if bag is None:
            bag = _read_bag(self.stores[case_id])
        if rows is not None:
            bag = bag[rows]
        return torch.from_numpy(np.ascontiguousarray(bag, dtype=np.float32))
