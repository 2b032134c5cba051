"""``ghanet import-features``: CLAM and TRIDENT .h5 files as feature stores; export-clam round-trips."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ghanet_pipeline import cli
from ghanet_pipeline.features import export_clam
from ghanet_pipeline.features import importing as fi
from ghanet_pipeline.io import store

ATTRS = {"encoder": "toy", "dim": 8, "weights": "random", "weights_sha256": "0" * 64, "dtype": "float16",
         "patch_size": 256, "patch_size_level0": 512, "target_mpp": 0.5, "effective_mpp": 0.499, "read_level": 1}


def _store(path, slide_id, n, rng, dim=8):
    with store.atomic_path(path) as tmp:
        group = store.create_group(tmp, {"ghanet_store": "features", "status": "ok", "reason": "",
                                         "slide_id": slide_id, **ATTRS, "dim": dim})
        store.write_array(group, "features", rng.normal(size=(n, dim)).astype(np.float16))
        store.write_array(group, "coords", (rng.integers(0, 200, size=(n, 2)) * 512).astype(np.int64))


def _read(path):
    group = store.open_store(path)
    return dict(group.attrs), store.read_array(group, "features"), store.read_array(group, "coords")


def _trident_file(path, n, rng, dim=8, coords=True, attrs=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        feats = h5.create_dataset("features", data=rng.normal(size=(n, dim)).astype(np.float32))
        feats.attrs["name"] = path.stem
        if coords:
            c = h5.create_dataset("coords", data=(rng.integers(0, 100, size=(n, 2)) * 512).astype(np.int64))
            if attrs:  # what TRIDENT's patching records on coords
                c.attrs.update({"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                                "target_magnification": 20, "overlap": 0, "name": path.stem})


def test_export_clam_then_import_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    original = tmp_path / "features" / "toy"
    for slide_id, n in (("A-1", 30), ("B-2", 7)):
        _store(original / f"{slide_id}.zarr", slide_id, n, rng)
    export_clam.export_dir(original, tmp_path / "clam")
    status = fi.import_dir(tmp_path / "clam", "clam", tmp_path / "imported", ["A-1", "B-2"], encoder="toy")
    assert status == {"A-1": "ok", "B-2": "ok"}
    for slide_id in ("A-1", "B-2"):
        a_attrs, a_feats, a_coords = _read(original / f"{slide_id}.zarr")
        b_attrs, b_feats, b_coords = _read(tmp_path / "imported" / f"{slide_id}.zarr")
        assert b_feats.dtype == a_feats.dtype and np.array_equal(a_feats, b_feats)  # bit for bit
        assert b_coords.dtype == np.int64 and np.array_equal(a_coords, b_coords)
        for key in ATTRS:
            assert b_attrs[key] == a_attrs[key], key
        assert b_attrs["imported_from"].endswith(f"{slide_id}.h5") and b_attrs["imported_format"] == "clam"
    export_clam.export_dir(tmp_path / "imported", tmp_path / "clam2")  # and back: the same h5 content
    for slide_id in ("A-1", "B-2"):
        with h5py.File(tmp_path / "clam" / "h5_files" / f"{slide_id}.h5") as x, \
                h5py.File(tmp_path / "clam2" / "h5_files" / f"{slide_id}.h5") as y:
            assert np.array_equal(x["features"][()], y["features"][()])
            assert np.array_equal(x["coords"][()], y["coords"][()])


def test_trident_job_folder_encoder_from_name_and_missing_slide(tmp_path):
    rng = np.random.default_rng(1)
    feats = tmp_path / "job" / "20x_256px_0px_overlap" / "features_uni_v1"
    _trident_file(feats / "S1.h5", 12, rng)
    _trident_file(feats / "S2.h5", 5, rng, attrs=False)
    code = None
    sheet = tmp_path / "samples.csv"
    sheet.write_text("slide_id,case_id,path\nS1,P1,s1.svs\nS2,P2,s2.svs\nS3,P3,s3.svs\n")
    code = cli.main(["import-features", "--dir", str(tmp_path / "job"), "--format", "trident", "--samples", str(sheet),
                     "--out", str(tmp_path / "out"), "--dtype", "float32"])  # fmt: skip
    assert code == 0
    attrs, f1, c1 = _read(tmp_path / "out" / "S1.zarr")
    with h5py.File(feats / "S1.h5") as h5:
        assert np.array_equal(f1, h5["features"][()]) and np.array_equal(c1, h5["coords"][()])
    assert attrs["encoder"] == "uni_v1" and attrs["dim"] == 8 and attrs["patch_size_level0"] == 512
    assert attrs["source_target_magnification"] == 20 and attrs["status"] == "ok"
    assert "patch_size_level0" not in _read(tmp_path / "out" / "S2.zarr")[0]  # not stated: heatmaps skipped
    failed = _read(tmp_path / "out" / "S3.zarr")[0]
    assert failed["status"] == "failed" and "no feature file S3.h5" in failed["reason"]


@pytest.mark.parametrize("problem, message", [
    ("dim", r"B\.h5: 6-d features, but the other files"),
    ("coords", r"B\.h5: no 'coords' dataset"),
    ("nan", r"B\.h5: 1 non-finite value"),
    ("stranger", r"absent from the sample sheet: .*Z\.h5"),
    ("rows", r"B\.h5: 'coords' has shape"),
])  # fmt: skip
def test_bad_files_are_errors_naming_the_file_and_nothing_is_written(tmp_path, problem, message):
    rng = np.random.default_rng(2)
    folder = tmp_path / "features_toy"
    _trident_file(folder / "A.h5", 4, rng)
    if problem == "dim":
        _trident_file(folder / "B.h5", 4, rng, dim=6)
    elif problem == "coords":
        _trident_file(folder / "B.h5", 4, rng, coords=False)
    else:
        _trident_file(folder / "B.h5", 4, rng)
    if problem == "nan":
        with h5py.File(folder / "B.h5", "r+") as h5:
            h5["features"][2, 3] = np.nan
    if problem == "rows":
        with h5py.File(folder / "B.h5", "r+") as h5:
            del h5["coords"]
            h5.create_dataset("coords", data=np.zeros((3, 2), np.int64))
    if problem == "stranger":
        _trident_file(folder / "Z.h5", 4, rng)
    with pytest.raises(fi.FeatureImportError, match=message):
        fi.import_dir(folder, "trident", tmp_path / "out", ["A", "B"])
    assert not (tmp_path / "out").exists()


def test_imported_features_train_ghanet_and_abmil_without_slides(tmp_path):
    """A cohort whose features exist only as TRIDENT-style .h5 files trains end to end."""
    from test_train import settings, write_cohort

    from ghanet_pipeline.training.train import train_fold

    torch.set_num_threads(1)
    genomics_dir, made = write_cohort(tmp_path / "cohort", n_patients=20, patches=(4, 12), two_slides=2)
    trident = tmp_path / "job" / "features_toy"
    slide_ids = []
    for zarr_path in sorted(made.glob("*.zarr")):
        attrs, feats, coords = _read(zarr_path)
        slide_ids.append(attrs["slide_id"])
        trident.mkdir(parents=True, exist_ok=True)
        with h5py.File(trident / f"{attrs['slide_id']}.h5", "w") as h5:
            h5.create_dataset("features", data=feats.astype(np.float32))
            h5.create_dataset("coords", data=np.arange(2 * len(feats)).reshape(-1, 2))
    fi.import_dir(tmp_path / "job", "trident", tmp_path / "features" / "toy", slide_ids)
    for model in ("ghanet", "abmil"):
        out = tmp_path / "models" / model / "fold0"
        result = train_fold(model, 0, genomics_dir, tmp_path / "features" / "toy", out, settings(epochs=1))
        assert result["n_train"] + result["n_val"] == 20 and not result["excluded"]
        metrics = pd.read_csv(out / "metrics.csv")
        assert np.isfinite(metrics.loss).all() and np.isfinite(metrics.val_cindex).all()
    ckpt = torch.load(tmp_path / "models" / "ghanet" / "fold0" / "checkpoint_final.pt", weights_only=True)
    assert ckpt["encoder"] == "toy" and ckpt["feature_dim"] == 16
    assert json.loads((tmp_path / "models" / "abmil" / "fold0" / "result.json").read_text())["n_val"] > 0


def test_clam_patching_attributes_give_the_level0_patch_size(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "clam" / "h5_files"
    for name, attrs in (("L1", {"patch_level": 1, "patch_size": 256, "downsample": [4.0, 4.0]}),
                        ("L0", {"patch_level": 0, "patch_size": 224}), ("Lx", {"patch_level": 2, "patch_size": 256})):
        _trident_file(folder / f"{name}.h5", 3, rng, attrs=False)
        with h5py.File(folder / f"{name}.h5", "r+") as h5:
            h5["coords"].attrs.update(attrs)
    fi.import_dir(tmp_path / "clam", "clam", tmp_path / "out", ["L1", "L0", "Lx"], encoder="resnet50_trunc")
    assert _read(tmp_path / "out" / "L1.zarr")[0]["patch_size_level0"] == 1024
    assert _read(tmp_path / "out" / "L0.zarr")[0]["patch_size_level0"] == 224
    assert "patch_size_level0" not in _read(tmp_path / "out" / "Lx.zarr")[0]  # level 2 of an unknown pyramid
