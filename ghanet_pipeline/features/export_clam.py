"""Export feature stores to the CLAM layout read by MCAT / SurvPath / G-HANet's own code.

``CLAM_DIR/h5_files/{slide}.h5``: datasets ``coords`` (N, 2) int64 (level-0 top-left) and
``features`` (N, D) float32; the file and ``coords`` carry attributes (``patch_size``,
``patch_level``, ``encoder``, ``weights_sha256``, ...). ``CLAM_DIR/pt_files/{slide}.pt``: the
features as one float32 torch tensor (``torch.load(path, weights_only=True)``).

Failed stores (N = 0) are skipped with a warning: CLAM-family loaders expect every listed
slide to have patches. Each file is written atomically; the h5 is filled chunk by chunk.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ghanet_pipeline.contracts.features import FeatureStoreAttrs
from ghanet_pipeline.io.layout import Layout
from ghanet_pipeline.io.store import (
    atomic_path,
    open_store,
    read_array,
    require_array,
)

log = logging.getLogger(__name__)

ROWS_PER_COPY = 8192


def export_dir(features_dir: Path, out: Path) -> tuple[list[str], list[str]]:
    """Export every finished store of ``features_dir``; returns (exported, skipped) slide ids."""
    exported, skipped = [], []
    for store_path in Layout.stores_in(features_dir):
        slide_id = Layout.slide_id_of(store_path)
        group = open_store(store_path)
        attrs = FeatureStoreAttrs.from_attrs(dict(group.attrs), source=store_path)
        # A damaged store (lost chunk, no zarr.json) raises DamagedStoreError naming it: never exported as zeros.
        if not attrs.ok or require_array(group, "features", store_path=store_path).shape[0] == 0:
            log.warning("%s: skipped (status %s: %s)", slide_id, attrs.status, attrs.reason)
            skipped.append(slide_id)
            continue
        export_store(group, slide_id, out)
        exported.append(slide_id)
    log.info("exported %d slide(s) to %s (%d skipped)", len(exported), out, len(skipped))
    return exported, skipped


# Store attributes written on the h5 file (import-features carries them back).
H5_ATTRS = ("slide_id", "encoder", "dim", "weights", "weights_sha256", "dtype", "patch_size", "patch_size_level0",
            "target_mpp", "effective_mpp", "read_level", "package_version")


def _h5_attrs(attrs: FeatureStoreAttrs) -> dict:
    return {k: getattr(attrs, k) for k in H5_ATTRS if getattr(attrs, k) is not None}


def _coords_attrs(attrs: FeatureStoreAttrs) -> dict[str, int]:
    """What CLAM's create_patches_fp writes on ``coords`` (patch_level, patch_size), and the level-0 size."""
    return {
        "patch_level": int(attrs.read_level or 0),
        "patch_size": int((attrs.patch_size_read if attrs.patch_size_read is not None else attrs.patch_size) or 0),
        "patch_size_level0": int(attrs.patch_size_level0 or 0),
    }


def export_store(group, slide_id: str, out: Path) -> tuple[Path, Path]:
    import torch

    attrs = FeatureStoreAttrs.from_attrs(dict(group.attrs), source=slide_id)
    # Read once through the checking reader (the .pt needs the whole array in memory anyway).
    feats = read_array(group, "features", slide_id=slide_id).astype(np.float32)
    coords = read_array(group, "coords", slide_id=slide_id).astype(np.int64)
    h5_path, pt_path = Layout.clam_h5(out, slide_id), Layout.clam_pt(out, slide_id)
    _write_h5(h5_path, feats, coords, attrs)
    with atomic_path(pt_path) as tmp:
        torch.save(torch.from_numpy(feats), tmp)
    log.info("%s: %d x %d -> %s, %s", slide_id, *feats.shape, h5_path, pt_path)
    return h5_path, pt_path


def _write_h5(h5_path: Path, feats: np.ndarray, coords: np.ndarray, attrs: FeatureStoreAttrs) -> None:
    import h5py

    n, dim = feats.shape
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as h5:
        d_feats = h5.create_dataset("features", shape=(n, dim), dtype="float32", chunks=(min(n, 1024), dim))
        d_coords = h5.create_dataset("coords", data=coords)
        for a in range(0, n, ROWS_PER_COPY):
            b = min(n, a + ROWS_PER_COPY)
            d_feats[a:b] = feats[a:b]
        for key, value in _h5_attrs(attrs).items():
            h5.attrs[key] = value
        for key, value in _coords_attrs(attrs).items():
            d_coords.attrs[key] = value
