"""The tissue stage's records: the tiles store's group attributes, its patch geometry, the slide status.

Written by :mod:`ghanet_pipeline.slides.tissue` only; read by the features, infer and report
stages and by the manifest. Attribute names are the keys on disk (``OUT/tiles/{id}.zarr``
group attributes, ``OUT/status/{id}.json``), so a field added here is the whole contract change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Mapping

from ghanet_pipeline.contracts.base import ContractError, Record

TILES_STORE = "tiles"  # the tiles store's ``ghanet_store`` attribute
REBUILD_HINT = "rerun 'ghanet tissue' for this slide (or delete the store and rerun the workflow)"


@dataclasses.dataclass(frozen=True)
class PatchGeometry(Record):
    """How one patch of a slide is read: at which level, how many pixels, at what resolution.

    ``choose_level`` makes it, the tiles store keeps its fields as attributes and the patch
    reader reads with it. Only what a reader needs is required: stores written by tools and
    tests may leave out the rest.
    """

    KIND: ClassVar[str] = "patch geometry"

    read_level: int
    patch_size: int  # px at target mpp (what the encoder sees)
    patch_size_read: int  # px read at ``read_level`` and resized to ``patch_size``
    patch_size_level0: int | None = None  # the same patch in level-0 px
    read_downsample: float | None = None  # level-0 px per read-level px
    read_level_mpp: float | None = None
    target_mpp: float | None = None
    effective_mpp: float | None = None  # physical patch size / patch_size
    upsampled: bool | None = None  # level 0 is coarser than the target (beyond tolerance)


GEOMETRY_FIELDS = tuple(f.name for f in dataclasses.fields(PatchGeometry))  # the required ones first


@dataclasses.dataclass(frozen=True, kw_only=True)  # keywords only: fields keep the order of the keys on disk
class TilesStoreAttrs(Record):
    """The group attributes of ``tiles/{id}.zarr`` (arrays: ``coords``, ``tissue_mask``, per-patch
    ``tissue_fraction``, ``artifact_fraction``, ``blur``). A failed slide's store has
    ``status: failed``, its ``reason`` and no geometry (those fields are None)."""

    KIND: ClassVar[str] = "tiles store"

    ghanet_store: str
    status: str  # ok | failed
    reason: str = ""
    warnings: tuple[str, ...] = ()
    slide_id: str
    source_path: str = ""
    source_size_bytes: int = 0
    level0_size: tuple[int, int] | None = None  # (w, h)
    mpp: float | None = None
    mpp_source: str | None = None
    target_mpp: float | None = None
    effective_mpp: float | None = None
    read_level: int | None = None
    read_downsample: float | None = None
    read_level_mpp: float | None = None
    upsampled: bool | None = None
    patch_size: int | None = None
    patch_size_read: int | None = None
    patch_size_level0: int | None = None
    step_level0: int | None = None
    overlap: float | None = None
    min_tissue_fraction: float | None = None
    mask_downsample: float | None = None  # level-0 px per tissue_mask px
    segmentation_level: int | None = None
    saturation_thresholds_used: tuple[int, int] | None = None
    pen_pixels: int = 0
    debris_pixels: int = 0
    n_candidates: int = 0
    n_dropped_on_artifact: int = 0
    n_past_edge: int = 0  # patches running past the right/bottom edge (read as white outside)
    quality_mpp: float | None = None
    quality_level: int | None = None
    blur_threshold: float | None = None
    blur_dropped: bool = False
    n_blurred: int = 0
    n_dropped_blur: int = 0
    n_fill_patches: int = 0
    outside_slide_reads_as: str = "white"
    segmentation: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    package_version: str = ""  # filled in by store.create_group when the store is written

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], *, source: str | Path = "") -> TilesStoreAttrs:
        record = super().from_attrs(attrs, source=source)
        if record.ghanet_store != TILES_STORE:
            where = f"{source} " if source else ""
            raise ContractError(
                f"{where}is a {record.ghanet_store!r} store, not a tiles store: point the stage at tiles/{{id}}.zarr "
                f"under the run folder, or {REBUILD_HINT}"
            )
        return record

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def geometry(self, *, source: str | Path = "") -> PatchGeometry:
        """The patch geometry; a :class:`ContractError` naming ``source`` when the store has none."""
        needed = GEOMETRY_FIELDS[:3]  # what reading a patch needs
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            where = f" {source}" if source else ""
            why = f"its slide failed ({self.reason})" if not self.ok else f"it lacks {', '.join(missing)}"
            raise ContractError(f"tiles store{where} has no patch geometry: {why}; {REBUILD_HINT}")
        return PatchGeometry(**{name: getattr(self, name) for name in GEOMETRY_FIELDS})


def geometry_fields(geometry: PatchGeometry | None) -> dict[str, Any]:
    """The geometry's fields as :class:`TilesStoreAttrs` keywords (all None without a geometry)."""
    return {name: None if geometry is None else getattr(geometry, name) for name in GEOMETRY_FIELDS}


@dataclasses.dataclass(frozen=True)
class SlideStatus(Record):
    """``status/{id}.json``: the tissue stage's verdict on one slide (written last: it marks the slide done)."""

    KIND: ClassVar[str] = "slide status"

    slide_id: str
    status: str  # ok | failed
    reason: str = ""
    path: str = ""
    n_patches: int = 0
    n_blurred: int = 0
    mpp: float | None = None
    mpp_source: str | None = None
    effective_mpp: float | None = None
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"
