"""Learning curves in the report: per model, each fold's metrics.csv as thin lines and the mean over
folds as a thick one, next to the cross-validation table; older runs with fewer columns still render."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.report import html as report
from ghanet_pipeline.report import readers

BLUE = np.array([0x1F, 0x77, 0xB4])
RED = np.array([0xD6, 0x27, 0x28])


def _metrics(epochs: int, seed: int, columns=None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    e = np.arange(1, epochs + 1)
    frame = pd.DataFrame({
        "epoch": e, "loss": 2.0 / e + rng.normal(0, 0.02, epochs), "nll": 1.8 / e, "recon": 0.2 / e,
        "val_loss": 2.2 / np.sqrt(e), "val_cindex": 0.5 + 0.03 * e + rng.normal(0, 0.01, epochs),
        "lr": 2e-4 * 0.5 ** (e // 3), "seconds": rng.uniform(1, 2, epochs),
        "train_cindex": [np.nan] * (epochs - 1) + [0.8],  # filled at the last epoch only
    })  # fmt: skip
    return frame if columns is None else frame[columns]


@pytest.fixture()
def run(tmp_path):
    models = tmp_path / "models"
    for fold, epochs in enumerate((6, 6, 4)):  # the third fold stopped early
        d = models / "ghanet" / f"fold{fold}"
        d.mkdir(parents=True)
        _metrics(epochs, fold).to_csv(d / "metrics.csv", index=False)
    old = models / "abmil"  # an older run: fewer columns, one fold without the file, one empty
    for fold in range(3):
        (old / f"fold{fold}").mkdir(parents=True)
    _metrics(5, 9, ["epoch", "loss", "val_cindex"]).to_csv(old / "fold0" / "metrics.csv", index=False)
    (old / "fold2" / "metrics.csv").write_text("")
    (models / "snn" / "fold0").mkdir(parents=True)  # trained before metrics.csv existed
    (models / "ghanet" / "summary.json").write_text(json.dumps({"cindex_final_mean": 0.61, "cindex_final_std": 0.02,
                                                               "cindex_final_per_fold": [0.6, 0.62, 0.61]}))
    return tmp_path


def _images(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m))) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def _count(img: Image.Image, rgb: np.ndarray) -> int:
    pixels = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    return int((np.abs(pixels - rgb).sum(axis=1) < 30).sum())


def test_read_curves_stacks_folds_and_keeps_missing_columns_missing(run):
    curves, notes = readers.read_curves(run / "models" / "ghanet")
    assert sorted(curves["fold"].unique()) == [0, 1, 2] and len(curves) == 16
    old, old_notes = readers.read_curves(run / "models" / "abmil")
    assert list(old.columns) == ["epoch", "loss", "val_cindex", "fold"] and len(old) == 5
    assert any("fold 1: no metrics.csv" in n for n in old_notes)
    assert any("fold 2: metrics.csv is not readable" in n for n in old_notes)


def test_cv_section_shows_curves_per_model_next_to_the_table(run):
    html = report.section_cv(run).body
    assert html.index('<table class="cv">') < html.index("Learning curves") < html.index("Per fold")
    images = _images(html)
    assert len(images) == 2  # abmil and ghanet (sorted); snn has none
    old, full = images
    assert full.size[0] == 3 * 420 and old.size[0] == 2 * 420  # loss, c-index, lr panels; lr absent in abmil
    for img in images:  # both series colours drawn (training loss / validation c-index in blue, validation loss red)
        assert _count(img, BLUE) > 500
    assert _count(full, RED) > 300 and _count(old, RED) < 50  # the old run has no validation loss
    assert "No per-epoch metrics for snn" in html
    assert "not recorded in this run: val_loss" in html


def test_mean_curve_is_the_mean_over_the_folds_that_reached_each_epoch(run):
    curves, _ = readers.read_curves(run / "models" / "ghanet")
    mean = curves.groupby("epoch")["val_cindex"].mean()
    folds = [pd.read_csv(run / "models" / "ghanet" / f"fold{k}" / "metrics.csv") for k in range(3)]
    assert mean[6] == pytest.approx((folds[0].val_cindex.iloc[5] + folds[1].val_cindex.iloc[5]) / 2)
    assert mean[1] == pytest.approx(np.mean([f.val_cindex.iloc[0] for f in folds]))


def test_whole_report_renders_with_curves_and_without_any(run, tmp_path):
    settings = stage_settings("report", None, None)
    page = report.build_report(run, settings)
    assert "Learning curves" in page and "could not be built" not in page
    empty = tmp_path / "empty"
    (empty / "models" / "m" / "fold0").mkdir(parents=True)
    page = report.build_report(empty, settings)
    assert "No per-epoch metrics for m" in page and "could not be built" not in page
