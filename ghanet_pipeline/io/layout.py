"""Where every output lives, and the rules that keep sample-sheet ids inside it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Same pattern as samples.schema.yaml: no separators, no leading dot, so no traversal.
SLIDE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class UnsafeIdError(ValueError):
    """An id from a sample sheet could escape the output folder or is not portable."""


def check_slide_id(slide_id: str) -> str:
    if not isinstance(slide_id, str) or not SLIDE_ID_PATTERN.match(slide_id) or ".." in slide_id:
        raise UnsafeIdError(
            f"slide_id {slide_id!r} is not allowed: use 1-200 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..' (it becomes a file name)"
        )
    return slide_id


class Wildcard(str):
    """A Snakemake wildcard such as ``{slide}`` standing for an id in a rule's path pattern."""


def wildcard(name: str) -> Wildcard:
    return Wildcard("{" + name + "}")


def _safe(slide_id: str) -> str:
    return slide_id if isinstance(slide_id, Wildcard) else check_slide_id(slide_id)


@dataclass(frozen=True)
class GenomicsFoldFiles:
    """``genomics/fold{k}/``: the files of one cross-validation fold."""

    dir: Path

    @property
    def split(self) -> Path:
        return self.dir / "split.json"

    @property
    def table(self) -> Path:
        return self.dir / "genomics.parquet"

    @property
    def scaler(self) -> Path:
        return self.dir / "scaler.json"

    @property
    def targets(self) -> Path:
        return self.dir / "targets.json"


@dataclass(frozen=True)
class GenomicsFiles:
    """``genomics/``: what the genomics stage writes (its ``--out-dir``)."""

    dir: Path

    @property
    def patients(self) -> Path:
        return self.dir / "patients.csv"

    @property
    def groups(self) -> Path:
        return self.dir / "groups.json"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def problems(self) -> Path:
        return self.dir / "report.txt"

    def fold(self, fold: int | str) -> GenomicsFoldFiles:
        return GenomicsFoldFiles(self.dir / f"fold{fold}")


@dataclass(frozen=True)
class FoldFiles:
    """``models/{model}/fold{k}/``: what one training job writes (its ``--out``)."""

    dir: Path

    @property
    def result(self) -> Path:
        return self.dir / "result.json"

    def checkpoint(self, which: str = "final") -> Path:
        """``which``: ``final`` or ``best``."""
        return self.dir / f"checkpoint_{which}.pt"

    @property
    def resume(self) -> Path:
        return self.dir / "resume.pt"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def predictions(self) -> Path:
        return self.dir / "predictions_val.csv"

    @property
    def log(self) -> Path:
        return self.dir / "train.log"


@dataclass(frozen=True)
class ModelFiles:
    """``models/{model}/``: the folds of one model and its summary."""

    dir: Path

    def fold(self, fold: int | str) -> FoldFiles:
        return FoldFiles(self.dir / f"fold{fold}")

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    def fold_dirs(self) -> list[Path]:
        """The fold folders present, in fold order."""
        found = [p for p in self.dir.glob("fold*") if p.is_dir() and p.name[4:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[4:]))


@dataclass(frozen=True)
class HeatmapFiles:
    """``heatmaps/``: what inference writes per slide (given the folder, as infer writes a temporary
    sibling and renames it into place)."""

    dir: Path

    def store(self, slide_id: str) -> Path:
        return self.dir / f"{_safe(slide_id)}.zarr"

    def png(self, slide_id: str) -> Path:
        return self.dir / f"{_safe(slide_id)}.png"

    def geojson(self, slide_id: str) -> Path:
        return self.dir / f"{_safe(slide_id)}.geojson"

    def topk(self, slide_id: str) -> Path:
        return self.dir / f"{_safe(slide_id)}_topk.png"


@dataclass(frozen=True)
class Layout:
    """The output tree of one run (see README, 'Outputs'): the only place its paths are spelt.

    Slide ids are checked (:func:`check_slide_id`); a :class:`Wildcard` passes through, so rules
    build their path patterns here too (``layout.tiles(wildcard("slide"))``).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # tissue
    @property
    def tiles_dir(self) -> Path:
        return self.root / "tiles"

    def tiles(self, slide_id: str) -> Path:
        return self.tiles_dir / f"{_safe(slide_id)}.zarr"

    @property
    def qc_dir(self) -> Path:
        return self.root / "qc"

    def qc_png(self, slide_id: str) -> Path:
        return self.qc_dir / f"{_safe(slide_id)}.png"

    def qc_geojson(self, slide_id: str) -> Path:
        return self.qc_dir / f"{_safe(slide_id)}.geojson"

    @property
    def status_dir(self) -> Path:
        return self.root / "status"

    def status(self, slide_id: str) -> Path:
        return self.status_dir / f"{_safe(slide_id)}.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    # features
    @property
    def features_root(self) -> Path:
        return self.root / "features"

    def features_dir(self, encoder: str) -> Path:
        return self.features_root / encoder_dirname(encoder)

    def features(self, encoder: str, slide_id: str) -> Path:
        return self.features_dir(encoder) / f"{_safe(slide_id)}.zarr"

    # genomics, training
    @property
    def genomics(self) -> GenomicsFiles:
        return GenomicsFiles(self.root / "genomics")

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model(self, model: str) -> ModelFiles:
        return ModelFiles(self.models_dir / model)

    def model_fold(self, model: str, fold: int | str) -> FoldFiles:
        return self.model(model).fold(fold)

    def model_summary(self, model: str) -> Path:
        return self.model(model).summary

    # inference, report
    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def heatmaps_dir(self) -> Path:
        return self.root / "heatmaps"

    @property
    def heatmaps(self) -> HeatmapFiles:
        return HeatmapFiles(self.heatmaps_dir)

    def heatmap(self, slide_id: str) -> Path:
        return self.heatmaps.store(slide_id)

    def heatmap_png(self, slide_id: str) -> Path:
        return self.heatmaps.png(slide_id)

    def heatmap_geojson(self, slide_id: str) -> Path:
        return self.heatmaps.geojson(slide_id)

    def heatmap_topk(self, slide_id: str) -> Path:
        return self.heatmaps.topk(slide_id)

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report(self) -> Path:
        return self.report_dir / "index.html"

    # per-job records of the workflow
    def log(self, stage: str, name: str) -> Path:
        return self.root / "logs" / stage / f"{name}.log"

    def benchmark(self, stage: str, name: str) -> Path:
        return self.root / "benchmarks" / stage / f"{name}.tsv"

    @property
    def benchmarks_dir(self) -> Path:
        """``benchmarks/``: one folder per rule, one ``{name}.tsv`` per job (see :meth:`benchmark`)."""
        return self.benchmark("_", "_").parent.parent

    @classmethod
    def of_store(cls, store: str | Path) -> tuple[str, Layout | None]:
        """``(kind, layout)`` of a store by its place in a run's tree: ``tiles`` (tiles/S.zarr),
        ``heatmaps`` (heatmaps/S.zarr), ``features`` (features/ENC/S.zarr), else ``("", None)``."""
        path = Path(store)
        for kind in ("tiles", "heatmaps"):
            layout = cls(path.parent.parent)
            if path.parent == getattr(layout, f"{kind}_dir"):
                return kind, layout
        layout = cls(path.parent.parent.parent)
        if path.parent.parent == layout.features_root:
            return "features", layout
        return "", None

    @staticmethod
    def store_in(folder: str | Path, slide_id: str) -> Path:
        """``{folder}/{slide_id}.zarr``: a slide's store in a folder given on the command line
        (``--features-dir``, ``--tiles-dir``), which need not sit in a run folder."""
        return Path(folder) / f"{_safe(slide_id)}.zarr"

    @staticmethod
    def stores_in(folder: str | Path) -> list[Path]:
        """The slide stores (``*.zarr``) of a folder, in name order."""
        return sorted(Path(folder).glob("*.zarr"))

    @staticmethod
    def slide_id_of(store: str | Path) -> str:
        """The slide id a store's file name carries (``{slide_id}.zarr``)."""
        return Path(store).name.removesuffix(".zarr")

    @staticmethod
    def metadata_of(store: str | Path) -> Path:
        """``{store}/zarr.json``: the group metadata, written last (its time is the store's)."""
        return Path(store) / "zarr.json"

    @staticmethod
    def lock_of(store: str | Path) -> Path:
        """``{store}.lock``: beside the store, not in it, so the store's atomic rename leaves it alone."""
        store = Path(store)
        return store.with_name(store.name + ".lock")

    # export-clam: the CLAM layout (h5_files/, pt_files/) that MCAT / SurvPath / CLAM read
    @staticmethod
    def clam_h5_dir(clam_dir: str | Path) -> Path:
        return Path(clam_dir) / "h5_files"

    @staticmethod
    def clam_h5(clam_dir: str | Path, slide_id: str) -> Path:
        return Layout.clam_h5_dir(clam_dir) / f"{_safe(slide_id)}.h5"

    @staticmethod
    def clam_pt(clam_dir: str | Path, slide_id: str) -> Path:
        return Path(clam_dir) / "pt_files" / f"{_safe(slide_id)}.pt"


def encoder_dirname(encoder: str) -> str:
    """A folder name for an encoder id such as ``hf-hub:MahmoodLab/UNI``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", encoder).strip("_") or "encoder"
