"""``ghanet import-features``: patch features computed elsewhere (CLAM, TRIDENT) as feature stores.

Input, one ``.h5`` per slide, named ``{slide_id}.h5``:

- ``clam``: ``DIR/h5_files/{slide}.h5`` (or ``DIR/{slide}.h5``), datasets ``features`` (N, D)
  and ``coords`` (N, 2, level-0 top-left x, y); CLAM's patching writes ``patch_level`` and
  ``patch_size`` on ``coords``; ``ghanet export-clam`` also writes the store's attributes on
  the file, which are carried back (so export then import round-trips exactly).
- ``trident``: the ``features_{encoder}`` folder of a TRIDENT job
  (``JOB/20x_256px_0px_overlap/features_uni_v1/{slide}.h5``; the job folder itself is
  accepted when it holds one such folder): the same two datasets, with TRIDENT's patching
  attributes on ``coords`` (``patch_size``, ``patch_size_level0``, ``target_magnification``,
  ``level0_magnification``, ``overlap``) and ``name`` on ``features``. TRIDENT writes these
  in ``trident/wsi_objects/WSI.py`` (``extract_patch_features`` -> ``save_h5``).

Each slide of the sample sheet becomes ``OUT/{slide_id}.zarr`` with the attributes and arrays
of a features-stage store (docs/contracts.md), written atomically; ``weights`` records the
file it came from and ``weights_sha256`` that file's digest. A sheet slide without a file
gets a failed store (training excludes it, saying why); a file whose slide is not in the
sheet, a missing ``features`` or ``coords`` dataset, mismatched shapes or dimensions, or
non-finite values are errors naming the file, and nothing is written for that file.
Heatmaps need ``patch_size_level0``; it is recorded when the file states it (TRIDENT, export-
clam, CLAM at level 0) and left out otherwise, and the report says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ghanet_pipeline.contracts.features import STORE_KIND, FeatureStoreAttrs
from ghanet_pipeline.features.encoder_types import sha256_file
from ghanet_pipeline.io.layout import Layout

log = logging.getLogger(__name__)

FORMATS = ("clam", "trident")
# Store attributes export-clam writes on the h5 file, carried back on import.
CARRIED = ("encoder", "dim", "weights", "weights_sha256", "dtype", "patch_size", "patch_size_level0", "target_mpp",
           "effective_mpp", "read_level")


class FeatureImportError(ValueError):
    """An input file cannot be imported as it is (named in the message)."""


@dataclass(frozen=True)
class H5Slide:
    """One slide's features as read from its file, checked."""

    slide_id: str
    path: Path
    features: np.ndarray  # (N, D) float32
    coords: np.ndarray  # (N, 2) int64
    attrs: dict[str, Any]  # what the file states about the patches (empty values dropped)


# ----------------------------------------------------------------------------- finding files


def feature_dir(root: Path, fmt: str) -> Path:
    """The folder that holds the per-slide ``.h5`` files."""
    if fmt not in FORMATS:
        raise FeatureImportError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not root.is_dir():
        raise FeatureImportError(f"{root} is not a folder; give the folder of the {fmt.upper()} feature files")
    if fmt == "clam" and Layout.clam_h5_dir(root).is_dir():
        return Layout.clam_h5_dir(root)
    if fmt == "trident" and not any(root.glob("*.h5")):
        found = sorted({p.parent for p in root.glob("**/features_*/*.h5")})
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise FeatureImportError(
                f"{root} holds features of several encoders or magnifications: "
                + ", ".join(str(p) for p in found) + "; give the one folder to import"
            )
    return root


def encoder_from_dir(folder: Path) -> str | None:
    """TRIDENT's folder name ``features_{encoder}`` names the encoder."""
    return folder.name.removeprefix("features_") if folder.name.startswith("features_") else None


# ----------------------------------------------------------------------------- reading one file


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_h5(path: Path, fmt: str, dim: int | None = None) -> H5Slide:
    """Read and check one file; every problem is an :class:`FeatureImportError` naming it."""
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise FeatureImportError(f"{path}: not a readable HDF5 file ({err}); copy it again") from err
    with h5:
        if "features" not in h5:
            raise FeatureImportError(f"{path}: no 'features' dataset (found {', '.join(h5.keys()) or 'nothing'})")
        if "coords" not in h5:
            raise FeatureImportError(
                f"{path}: no 'coords' dataset. Patch coordinates are needed to tie features to the slide "
                f"(heatmaps) and are written by CLAM and TRIDENT; re-export the features with their coordinates"
            )
        features = np.asarray(h5["features"][()])
        coords = np.asarray(h5["coords"][()])
        attrs = {k: _plain(v) for k, v in h5.attrs.items()}
        coord_attrs = {k: _plain(v) for k, v in h5["coords"].attrs.items()}
    if features.ndim == 3 and features.shape[0] == 1:  # some writers keep a batch axis
        features = features[0]
    if features.ndim != 2:
        raise FeatureImportError(f"{path}: 'features' has shape {features.shape}; expected (patches, dimension)")
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] != features.shape[0]:
        raise FeatureImportError(
            f"{path}: 'coords' has shape {coords.shape} for {features.shape[0]} feature rows; expected "
            f"({features.shape[0]}, 2)"
        )
    if dim is not None and features.shape[1] != dim:
        raise FeatureImportError(
            f"{path}: {features.shape[1]}-d features, but the other files (or --dim) have {dim}-d: "
            "one folder must hold one encoder's features"
        )
    features = features.astype(np.float32, copy=False)
    bad = ~np.isfinite(features)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise FeatureImportError(
            f"{path}: {int(bad.sum())} non-finite value(s) (NaN/inf) in {len(rows)} patch row(s), first rows "
            f"{rows[:5].tolist()}; recompute this slide's features (a fp16 overflow or a damaged tile)"
        )
    if not np.all(np.isfinite(coords)) or (coords < 0).any():
        raise FeatureImportError(f"{path}: 'coords' holds negative or non-finite values; they must be level-0 pixels")
    return H5Slide(path.stem, path, features, coords.astype(np.int64), _geometry(attrs, coord_attrs, fmt))


def _geometry(attrs: dict, coord_attrs: dict, fmt: str) -> dict[str, Any]:
    """What the file states about the patches, in the store's attribute names."""
    out = {k: attrs[k] for k in CARRIED if attrs.get(k) not in (None, "")}
    level = coord_attrs.get("patch_level", attrs.get("read_level"))
    if level is not None:
        out.setdefault("read_level", int(level))
    if coord_attrs.get("patch_size_level0"):
        out["patch_size_level0"] = int(coord_attrs["patch_size_level0"])
    elif coord_attrs.get("patch_size") and fmt == "clam":
        # CLAM's patching records the read level's downsample; without it only level 0 is certain.
        downsample = coord_attrs.get("downsample")
        if downsample is not None:
            factor = float(np.mean(np.asarray(downsample, dtype=float)))
            out.setdefault("patch_size_level0", int(round(int(coord_attrs["patch_size"]) * factor)))
        elif int(level or 0) == 0:
            out.setdefault("patch_size_level0", int(coord_attrs["patch_size"]))
    if coord_attrs.get("patch_size"):
        out.setdefault("patch_size_read", int(coord_attrs["patch_size"]))
        out.setdefault("patch_size", int(coord_attrs["patch_size"]))
    for key in ("target_magnification", "level0_magnification", "overlap"):
        if coord_attrs.get(key) is not None:
            out[f"source_{key}"] = coord_attrs[key]
    return out


# ----------------------------------------------------------------------------- writing stores


def write_store(out: Path, item: H5Slide, encoder: str, dtype: str, fmt: str) -> Path:
    from ghanet_pipeline.io.store import atomic_path, create_group, write_array

    target = Layout.store_in(out, item.slide_id)
    attrs = FeatureStoreAttrs(**{
        "ghanet_store": STORE_KIND, "status": "ok", "reason": "", "slide_id": item.slide_id,
        **item.attrs,
        "encoder": encoder, "dim": int(item.features.shape[1]), "dtype": dtype,
        "weights": item.attrs.get("weights", f"imported from {fmt}: {item.path}"),
        "weights_sha256": item.attrs.get("weights_sha256", ""),
        "imported_from": str(item.path), "imported_format": fmt, "source_sha256": sha256_file(item.path),
        "n_patches": int(item.features.shape[0]), "n_bad_patches": 0,
    })  # fmt: skip
    with atomic_path(target) as tmp:
        group = create_group(tmp, attrs.to_attrs())
        write_array(group, "features", item.features.astype(dtype))
        write_array(group, "coords", item.coords)
    return target


def write_failed(out: Path, slide_id: str, encoder: str, reason: str, dim: int) -> Path:
    from ghanet_pipeline.io.store import atomic_path, create_group, write_array

    target = Layout.store_in(out, slide_id)
    attrs = FeatureStoreAttrs(ghanet_store=STORE_KIND, status="failed", reason=reason, slide_id=slide_id,
                              encoder=encoder, dim=dim, n_patches=0)
    with atomic_path(target) as tmp:
        group = create_group(tmp, attrs.to_attrs())
        write_array(group, "features", np.zeros((0, dim), np.float32))
        write_array(group, "coords", np.zeros((0, 2), np.int64))
    return target


def import_dir(
    root: str | Path, fmt: str, out: str | Path, slide_ids: list[str], encoder: str | None = None,
    dtype: str = "float16", dim: int | None = None,
) -> dict[str, str]:
    """Import every sheet slide; returns ``{slide_id: "ok" | "failed"}``. All files are read and
    checked before anything is written, so a bad file leaves the output folder as it was."""
    from ghanet_pipeline.io.layout import check_slide_id

    folder = feature_dir(Path(root), fmt)
    encoder = encoder or encoder_from_dir(folder)
    if not encoder:
        raise FeatureImportError("give --encoder: the name of the encoder that made these features (it names the folder)")
    if dtype not in ("float16", "float32"):
        raise FeatureImportError(f"dtype must be float16 or float32, got {dtype!r}")
    files = {p.stem: p for p in sorted(folder.glob("*.h5"))}
    if not files:
        raise FeatureImportError(f"no .h5 files in {folder}")
    wanted = set(slide_ids)
    strangers = sorted(p for s, p in files.items() if s not in wanted)
    if strangers:
        raise FeatureImportError(
            "feature file(s) of slides absent from the sample sheet: " + ", ".join(map(str, strangers[:10]))
            + (f" and {len(strangers) - 10} more" if len(strangers) > 10 else "")
            + ". The file name must be the sheet's slide_id (+ .h5): add the slides to the sheet or rename the files"
        )
    read: list[H5Slide] = []
    for slide_id in slide_ids:
        check_slide_id(slide_id)
        if slide_id in files:
            item = read_h5(files[slide_id], fmt, dim)
            if dtype == "float16" and np.abs(item.features).max(initial=0) > np.finfo(np.float16).max:
                raise FeatureImportError(f"{item.path}: values beyond the float16 range; import with --dtype float32")
            dim = dim or int(item.features.shape[1])
            read.append(item)
    assert dim is not None
    out = Path(out)
    status: dict[str, str] = {}
    for item in read:
        write_store(out, item, encoder, dtype, fmt)
        status[item.slide_id] = "ok"
        log.info("%s: %d x %d from %s", item.slide_id, *item.features.shape, item.path)
    for slide_id in slide_ids:
        if slide_id not in status:
            reason = f"no feature file {slide_id}.h5 in {folder}"
            write_failed(out, slide_id, encoder, reason, dim)
            status[slide_id] = "failed"
            log.warning("%s: %s; written as a failed store (training leaves it out)", slide_id, reason)
    no_geometry = [i.slide_id for i in read if "patch_size_level0" not in i.attrs]
    if no_geometry:
        log.warning("%d slide(s) state no patch size at level 0 (%s...): their heatmaps will be skipped",
                    len(no_geometry), ", ".join(no_geometry[:3]))
    log.info("imported %d slide(s) into %s (%d without a file)", len(read), out, len(slide_ids) - len(read))
    return status
