"""The feature store's group attributes: written by ``ghanet features`` and ``ghanet import-features``,
read by feature-store resumption, export-clam, training, inference and the report.

Field names are the attribute keys on disk. ``None`` means "not recorded": :meth:`FeatureStoreAttrs.to_attrs`
leaves such fields out, because the two writers record different things (an imported store has no
tiles store, device or run time; a failed one has no weights digest) and stores written before a
field existed read with its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ghanet_pipeline.contracts.base import Record

STORE_KIND = "features"  # the ``ghanet_store`` value of every feature store
FINISHED = ("ok", "failed")  # statuses of a store whose writer finished (a failure is a result too)


@dataclass(frozen=True)
class FeatureStoreAttrs(Record):
    """Attributes of ``features/{encoder}/{slide}.zarr`` (docs/contracts.md, "features")."""

    KIND = "feature store"

    # what the store is and how its slide ended
    ghanet_store: str | None = None  # "features"; absent: not written by this pipeline
    status: str = "ok"  # ok | failed | incomplete (being written); stores without one were ok
    reason: str = ""  # why a slide failed
    slide_id: str | None = None  # absent: the store's file name says it
    n_patches: int | None = None  # rows of `features` and `coords`; absent while incomplete
    n_bad_patches: int | None = None  # undecodable patches dropped (features.skip_bad_patches)
    bad_patches: tuple[tuple[int, int], ...] | None = None  # their level-0 (x, y), at most 1000
    # the encoder
    encoder: str | None = None
    dim: int | None = None  # feature dimension (0: a failed store of an encoder not built)
    weights: str | None = None  # description of the weights loaded, "random", or the requested setting
    weights_sha256: str | None = None  # "" when nothing was loaded
    dtype: str | None = None  # stored dtype: float16 | float32
    precision: str | None = None  # fp32 | bf16, as computed
    graph: str | None = None  # eager | frozen (features.cpu_graph); absent: eager, or written before it existed
    device: str | None = None
    # the patches, as the tiles store laid them out
    patch_size: int | None = None  # px at target_mpp
    patch_size_read: int | None = None  # px at read_level
    patch_size_level0: int | None = None  # px at level 0 (heatmaps need it)
    read_level: int | None = None
    target_mpp: float | None = None
    effective_mpp: float | None = None
    tiles_store: str | None = None
    slide_path: str | None = None
    # provenance
    package_version: str | None = None
    seconds: float | None = None  # encoding time of an ok store
    imported_from: str | None = None  # import-features: the source .h5 file
    imported_format: str | None = None  # clam | trident
    source_sha256: str | None = None  # digest of that file
    source_target_magnification: Any = None  # TRIDENT's patching attributes, as stated
    source_level0_magnification: Any = None
    source_overlap: Any = None

    def to_attrs(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_attrs().items() if v is not None}

    @property
    def is_feature_store(self) -> bool:
        return self.ghanet_store == STORE_KIND

    @property
    def finished(self) -> bool:
        """Written to the end by a features writer, as ``ok`` or ``failed``."""
        return self.is_feature_store and self.status in FINISHED

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def slide_id_or(self, default: str) -> str:
        return self.slide_id if self.slide_id is not None else default
