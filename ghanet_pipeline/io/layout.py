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


@dataclass(frozen=True)
class Layout:
    """The output tree of one run (see README, 'Outputs')."""

    root: Path

    def tiles(self, slide_id: str) -> Path:
        return self.root / "tiles" / f"{check_slide_id(slide_id)}.zarr"

    def qc_png(self, slide_id: str) -> Path:
        return self.root / "qc" / f"{check_slide_id(slide_id)}.png"

    def qc_geojson(self, slide_id: str) -> Path:
        return self.root / "qc" / f"{check_slide_id(slide_id)}.geojson"

    def status(self, slide_id: str) -> Path:
        return self.root / "status" / f"{check_slide_id(slide_id)}.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    def features(self, encoder: str, slide_id: str) -> Path:
        return self.root / "features" / encoder_dirname(encoder) / f"{check_slide_id(slide_id)}.zarr"

    @property
    def genomics(self) -> Path:
        return self.root / "genomics"

    def model_fold(self, model: str, fold: int) -> Path:
        return self.root / "models" / model / f"fold{fold}"

    def model_summary(self, model: str) -> Path:
        return self.root / "models" / model / "summary.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    def heatmap(self, slide_id: str) -> Path:
        return self.root / "heatmaps" / f"{check_slide_id(slide_id)}.zarr"

    @property
    def report(self) -> Path:
        return self.root / "report" / "index.html"


def encoder_dirname(encoder: str) -> str:
    """A folder name for an encoder id such as ``hf-hub:MahmoodLab/UNI``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", encoder).strip("_") or "encoder"
