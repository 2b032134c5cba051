"""Features you already have: `features.import_dir` replaces the tissue and features stages, and the
whole workflow (genomics, training of G-HANet and ABMIL, inference, report) runs on CLAM .h5 files.
Slides whose file exists get heatmap pictures; slides without one get predictions and arrays only."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from test_genomics_inputs import cohort, write_signatures
from workflow_util import snakemake, tiny_demo_config

from ghanet_pipeline.io.store import open_store

CMU = (2220, 2967)  # level-0 size of the shipped real slide
PATCH_LEVEL0 = 512


def write_clam_h5(path, n: int, rng: np.random.Generator, dim: int = 16) -> None:
    """What CLAM's create_patches + extract_features write: features, and coords with its patching attrs."""
    grid = np.array([(x, y) for y in range(0, CMU[1] - PATCH_LEVEL0, PATCH_LEVEL0)
                     for x in range(0, CMU[0] - PATCH_LEVEL0, PATCH_LEVEL0)], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("features", data=rng.normal(size=(n, dim)).astype(np.float32))
        coords = h5.create_dataset("coords", data=grid[:n])
        coords.attrs["patch_level"] = 0
        coords.attrs["patch_size"] = PATCH_LEVEL0


@pytest.mark.slow
def test_imported_clam_features_run_the_whole_workflow(tmp_path, test_slides):
    rng = np.random.default_rng(5)
    table = cohort()
    table.to_csv(tmp_path / "cohort.csv", index=False)
    rows = []
    for i, (slide_id, case_id) in enumerate(zip(table.slide_id, table.case_id)):
        write_clam_h5(tmp_path / "clam" / "h5_files" / f"{slide_id}.h5", 12 + i % 5, rng)
        if i < 3:  # these slides are at hand: their heatmaps get pictures
            path = tmp_path / "slides" / f"{slide_id}.svs"
            path.parent.mkdir(exist_ok=True)
            shutil.copyfile(test_slides.cmu, path)
        else:
            path = tmp_path / "elsewhere" / f"{slide_id}.svs"  # not on this machine
        rows.append({"slide_id": slide_id, "case_id": case_id, "path": str(path)})
    pd.DataFrame(rows).to_csv(tmp_path / "samples.csv", index=False)
    tiny_demo_config(
        tmp_path, demo={"enabled": False}, samples=str(tmp_path / "samples.csv"),
        cohort_table=str(tmp_path / "cohort.csv"), signatures=str(write_signatures(tmp_path)),
        genomics={"n_folds": 2, "n_bins": 2},
        features={"encoder": "clam_uni", "import_dir": str(tmp_path / "clam"), "import_format": "clam"},
        train={"models": ["ghanet", "abmil"], "epochs": 1, "grad_accum": 4, "device": "cpu"},
        infer={"top_k": 2, "device": "cpu"},
    )
    planned = snakemake(tmp_path, "-n").stdout
    assert "import_features" in planned and "rule tissue" not in planned and "rule features" not in planned

    snakemake(tmp_path, "--cores", "2")
    out = tmp_path / "results"
    assert not (out / "tiles").exists(), "no tissue stage when features are imported"
    attrs = dict(open_store(out / "features" / "clam_uni" / "S03.zarr").attrs)
    assert attrs["status"] == "ok" and attrs["encoder"] == "clam_uni" and attrs["patch_size_level0"] == PATCH_LEVEL0
    for model in ("ghanet", "abmil"):
        assert (out / "models" / model / "summary.json").is_file()
    predictions = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert set(predictions.status) == {"ok"} and len(predictions) == table.case_id.nunique()
    heat = out / "heatmaps"
    for slide_id in ("S00", "S01", "S02"):
        assert (heat / f"{slide_id}.png").is_file() and (heat / f"{slide_id}_topk.png").is_file()
        assert dict(open_store(heat / f"{slide_id}.zarr").attrs)["geometry"] == "feature store and slide"
    assert (heat / "S03.zarr").is_dir() and (heat / "S03.geojson").is_file()
    assert not (heat / "S03.png").exists(), "no picture without the slide file"
    assert (out / "report" / "index.html").is_file()
