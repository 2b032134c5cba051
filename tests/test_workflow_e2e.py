"""One real Snakemake run of a tiny demo cohort, every stage, then checks of what it made."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from workflow_util import snakemake, tiny_demo_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    tiny_demo_config(workdir)
    result = snakemake(workdir, "--cores", "2")
    return workdir, result


def test_every_stage_wrote_its_outputs(demo_run):
    workdir, _ = demo_run
    out = workdir / "results"
    manifest = pd.read_csv(out / "manifest.csv")
    assert (manifest.status == "ok").all(), manifest
    for slide in manifest.slide_id:
        store = zarr.open_group(str(out / "features" / "efficientnet_lite0" / f"{slide}.zarr"), mode="r")
        tiles = zarr.open_group(str(out / "tiles" / f"{slide}.zarr"), mode="r")
        assert store["features"].shape == (tiles["coords"].shape[0], 1280)
        np.testing.assert_array_equal(store["coords"][:], tiles["coords"][:])
        assert (out / "qc" / f"{slide}.png").stat().st_size > 0
    summary = json.loads((out / "genomics" / "summary.json").read_text())
    assert summary["n_patients"] == 6 and len(summary["folds"]) == 2
    for model in ("ghanet", "snn"):
        s = json.loads((out / "models" / model / "summary.json").read_text())
        assert len(s["cindex_final_per_fold"]) == 2 and 0 <= s["cindex_final_mean"] <= 1
        ckpt = torch.load(out / "models" / model / "fold0" / "checkpoint_final.pt", weights_only=True)
        assert "state_dict" in ckpt
    predictions = pd.read_csv(out / "predictions.csv")
    assert set(predictions.case_id) == set(pd.read_csv(workdir / "demo_data" / "samples.csv").case_id)
    assert np.isfinite(predictions.risk).all()
    html = (out / "report" / "index.html").read_text()
    assert "Cross-validation" in html or "cross-validation" in html
    assert (out / "logs" / "tissue").is_dir() and (out / "benchmarks" / "features").is_dir()


def test_second_run_has_nothing_to_do(demo_run):
    workdir, _ = demo_run
    out = snakemake(workdir, "-n", "--cores", "2").stdout
    assert "Nothing to be done" in out or "nothing to be done" in out.lower()


def test_slide_only_cohort_with_earlier_models(demo_run, tmp_path, test_slides):
    """A new cohort with slides and no genomics at all: tissue -> features -> infer -> report."""
    workdir, _ = demo_run
    demo_slides = sorted((workdir / "demo_data" / "slides").glob("*-01.svs"))[:2]  # two patients
    rows = [f"{p.stem},{p.stem[:9]},{p}" for p in demo_slides]
    rows.append(f"CMU-1,CMU-CASE,{test_slides.cmu}")
    rows.append(f"BROKEN-1,BROKEN-CASE,{test_slides.unopenable}")
    (tmp_path / "samples.csv").write_text("slide_id,case_id,path\n" + "\n".join(rows) + "\n")
    tiny_demo_config(
        tmp_path,
        demo={"enabled": False},
        samples="samples.csv",
        infer={"models_dir": str(workdir / "results" / "models")},
    )
    snakemake(tmp_path, "--cores", "2")
    predictions = pd.read_csv(tmp_path / "results" / "predictions.csv").set_index("case_id")
    assert set(predictions.index) == {p.stem[:9] for p in demo_slides} | {"CMU-CASE", "BROKEN-CASE"}
    assert predictions.loc["BROKEN-CASE", "status"] == "missing"
    assert str(predictions.loc["BROKEN-CASE", "reason"]).strip() not in ("", "nan")
    ok = predictions[predictions.status == "ok"]
    assert len(ok) == 3 and np.isfinite(ok.risk).all() and set(ok.risk_group) <= {"high", "low"}
    assert not (tmp_path / "results" / "genomics").exists() and not (tmp_path / "results" / "models").exists()
    html = (tmp_path / "results" / "report" / "index.html").read_text()
    assert "BROKEN-1" in html
