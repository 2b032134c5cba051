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
    for store_path in sorted(features_dir.glob("*.zarr")):
        slide_id = store_path.name.removesuffix(".zarr")
        group = open_store(store_path)
        attrs = dict(group.attrs)
        # A damaged store (lost chunk, no zarr.json) raises DamagedStoreError naming it: never exported as zeros.
        if attrs.get("status", "ok") != "ok" or require_array(group, "features", store_path=store_path).shape[0] == 0:
            log.warning("%s: skipped (status %s: %s)", slide_id, attrs.get("status"), attrs.get("reason", ""))
            skipped.append(slide_id)
            continue
        export_store(group, slide_id, out)
        exported.append(slide_id)
    log.info("exported %d slide(s) to %s (%d skipped)", len(exported), out, len(skipped))
    return exported, skipped


def _h5_attrs(attrs: dict) -> dict:
    keys = ("slide_id", "encoder", "dim", "weights", "weights_sha256", "dtype", "patch_size", "patch_size_level0",
            "target_mpp", "effective_mpp", "read_level", "package_version")
    return {k: attrs[k] for k in keys if attrs.get(k) is not None}


def export_store(group, slide_id: str, out: Path) -> tuple[Path, Path]:
    import h5py
    import torch

    attrs = dict(group.attrs)
    # Read once through the checking reader (the .pt needs the whole array in memory anyway).
    feats = read_array(group, "features", slide_id=slide_id).astype(np.float32)
    coords = read_array(group, "coords", slide_id=slide_id).astype(np.int64)
    n, dim = feats.shape
    h5_path = out / "h5_files" / f"{slide_id}.h5"
    pt_path = out / "pt_files" / f"{slide_id}.pt"
    with atomic_path(h5_path) as tmp:
        with h5py.File(tmp, "w") as h5:
            d_feats = h5.create_dataset("features", shape=(n, dim), dtype="float32", chunks=(min(n, 1024), dim))
            d_coords = h5.create_dataset("coords", data=coords)
            for a in range(0, n, ROWS_PER_COPY):
                b = min(n, a + ROWS_PER_COPY)
                d_feats[a:b] = feats[a:b]
            for key, value in _h5_attrs(attrs).items():
                h5.attrs[key] = value
            # CLAM's create_patches_fp writes these two on `coords`.
            d_coords.attrs["patch_level"] = int(attrs.get("read_level", 0) or 0)
            d_coords.attrs["patch_size"] = int(attrs.get("patch_size_read", attrs.get("patch_size", 0)) or 0)
            d_coords.attrs["patch_size_level0"] = int(attrs.get("patch_size_level0", 0) or 0)
    tensor = torch.from_numpy(feats)
    with atomic_path(pt_path) as tmp:
        torch.save(tensor, tmp)
    log.info("%s: %d x %d -> %s, %s", slide_id, n, dim, h5_path, pt_path)
    return h5_path, pt_path
