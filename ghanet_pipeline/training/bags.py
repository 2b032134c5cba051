"""Patient bags from Zarr feature stores: every usable slide of a patient, concatenated.

The one reader of feature stores for training and inference: :func:`inspect_store` decides
whether a slide's store can be used (or says why not), :func:`read_bag` reads the bag of a
patient's usable slides. ``find_patient_stores`` decides which patients have features (others
are excluded with a reason); ``BagSource`` serves a patient's bag as a float32 tensor, from an
in-memory cache when the cohort fits in the budget (kept in the stores' dtype, float16 stays
float16), otherwise streamed from the stores on every request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ghanet_pipeline.contracts.features import FeatureStoreAttrs
from ghanet_pipeline.io.layout import Layout
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
    """A usable feature store: status ok, with at least one patch."""

    slide_id: str
    path: Path
    n_patches: int
    dim: int
    itemsize: int
    encoder: str
    group: Any = field(default=None, compare=False, repr=False)  # the opened store
    attrs: FeatureStoreAttrs | None = field(default=None, compare=False, repr=False)


# Why a store cannot be used (UnusableStore.problem); each stage words its own message.
MISSING, UNREADABLE, NOT_OK, EMPTY = "missing", "unreadable", "not ok", "empty"


@dataclass(frozen=True)
class UnusableStore:
    slide_id: str
    path: Path
    problem: str  # MISSING, UNREADABLE, NOT_OK or EMPTY
    detail: str = ""  # the error (UNREADABLE), the recorded reason (NOT_OK) or the shape (EMPTY)
    status: str = ""  # the recorded status (NOT_OK)


def inspect_store(path: Path, slide_id: str, *, with_coords: bool = False) -> SlideFeatures | UnusableStore:
    """Open ``path`` and check it can serve a bag; a damaged finished store raises
    :class:`DamagedStoreError` (a broken run output, never a silently missing slide).
    ``with_coords``: the ``coords`` array must be there too (heatmaps need it)."""
    if not path.exists():
        return UnusableStore(slide_id, path, MISSING)
    try:
        group = open_store(path)
    except DamagedStoreError:
        raise
    except (FileNotFoundError, ValueError, OSError) as err:
        return UnusableStore(slide_id, path, UNREADABLE, str(err))
    attrs = FeatureStoreAttrs.from_attrs(dict(group.attrs), source=path)
    if not attrs.ok:
        return UnusableStore(slide_id, path, NOT_OK, attrs.reason, str(attrs.status))
    features = require_array(group, "features", slide_id=slide_id, store_path=path)
    if with_coords:
        require_array(group, "coords", slide_id=slide_id, store_path=path)
    if not has_integrity(features):
        log.warning("slide %s: feature store %s predates integrity records: only missing chunks are detected; "
                    "rebuild it to add checksums", slide_id, path)
    if features.ndim != 2 or features.shape[0] == 0:
        return UnusableStore(slide_id, path, EMPTY, str(features.shape))
    return SlideFeatures(slide_id, path, int(features.shape[0]), int(features.shape[1]), features.dtype.itemsize,
                         attrs.encoder or "", group, attrs)


def read_bag(slides: list[SlideFeatures]) -> np.ndarray:
    """The bag of usable slides, rows concatenated in order; a damaged store raises
    :class:`DamagedStoreError` (never reads as zeros)."""
    parts = [read_array(s.group if s.group is not None else open_store(s.path), "features", slide_id=s.slide_id,
                        store_path=s.path) for s in slides]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def _training_reason(unusable: UnusableStore) -> str:
    """Why a patient's slide is left out of training (result.json, ``excluded``)."""
    u = unusable
    what = {
        MISSING: f"no feature store at {u.path}",
        UNREADABLE: f"unreadable feature store ({u.detail})",
        NOT_OK: f"feature store status '{u.status}' ({u.detail})",
        EMPTY: f"feature store {u.path} holds no patches (shape {u.detail})",
    }[u.problem]
    return f"slide {u.slide_id}: {what}"


@dataclass(frozen=True)
class CohortFeatures:
    stores: dict[str, list[SlideFeatures]]  # case_id -> usable slides (>= 1)
    excluded: list[dict[str, str]]  # {"case_id", "reason"}
    dim: int
    encoder: str


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
            found = inspect_store(Layout.store_in(features_dir, slide_id), slide_id)
            if isinstance(found, UnusableStore):
                reasons.append(_training_reason(found))
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


class BagSource:
    """Patient bags by case id; cached in memory when they fit ``cache_bytes`` (None = half of free RAM).

    A bag is read at its first ``get`` (then kept, when cached), not when the source is built:
    a fold that ``ghanet train --keep-complete`` keeps reads no feature store. ``shared``: bags
    kept by the sources of earlier folds of the same job (keyed by the stores they came from), so
    that a job training several folds reads each feature store once, not once per fold.
    """

    def __init__(self, stores: Mapping[str, list[SlideFeatures]], cache_bytes: int | None = None,
                 shared: dict[tuple[str, ...], np.ndarray] | None = None) -> None:
        self.stores = dict(stores)
        self.shared = shared if shared is not None else {}
        total = sum(s.n_patches * s.dim * s.itemsize for slides in self.stores.values() for s in slides)
        budget = available_memory_bytes() // 2 if cache_bytes is None else int(cache_bytes)
        self.in_memory = total <= budget
        self.cache: dict[str, np.ndarray] = {}
        log.info("patient bags: %d patients, %.2f GB of features, %s (budget %.2f GB)", len(self.stores),
                 total / 1e9, "cached in memory" if self.in_memory else "streamed from the stores", budget / 1e9)

    def __contains__(self, case_id: str) -> bool:
        return case_id in self.stores

    def n_patches(self, case_id: str) -> int:
        return sum(s.n_patches for s in self.stores[case_id])

    def get(self, case_id: str, rows: np.ndarray | None = None) -> torch.Tensor:
        """The bag (N, D) as float32; ``rows`` picks a subset (sorted row indices)."""
        bag = self.cache.get(case_id)
        if bag is None:
            key = tuple(str(s.path) for s in self.stores[case_id])
            bag = self.shared.get(key)
            if bag is None:
                bag = read_bag(self.stores[case_id])
            if self.in_memory:
                self.cache[case_id] = self.shared[key] = bag
        if rows is not None:
            bag = bag[rows]
        return torch.from_numpy(np.ascontiguousarray(bag, dtype=np.float32))
