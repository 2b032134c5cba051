"""`ghanet export-clam`: h5 + pt files in the layout CLAM-family code reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ghanet_pipeline import cli
from ghanet_pipeline.io import store


def write_features_store(path, feats: np.ndarray, coords: np.ndarray, status: str = "ok", reason: str = "") -> None:
    """A feature store as `ghanet features` writes it (contract 'features')."""
    attrs = {
        "ghanet_store": "features", "status": status, "reason": reason, "slide_id": path.name[:-5],
        "encoder": "efficientnet_lite0", "dim": int(feats.shape[1]), "weights": "random", "weights_sha256": "",
        "dtype": str(feats.dtype), "patch_size": 256, "patch_size_read": 512, "patch_size_level0": 1024,
        "read_level": 1, "target_mpp": 0.5, "effective_mpp": 0.5, "tiles_store": "x", "n_bad_patches": 0,
    }
    with store.atomic_path(path) as tmp:
        group = store.create_group(tmp, attrs)
        store.write_array(group, "features", feats, chunk_rows=3)
        store.write_array(group, "coords", coords.astype(np.int64))


def test_export_clam_h5_and_pt(tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    fdir = tmp_path / "features" / "efficientnet_lite0"
    feats = {"s1": rng.normal(size=(7, 16)).astype(np.float16), "s2": rng.normal(size=(3, 16)).astype(np.float16)}
    coords = {k: rng.integers(0, 10_000, size=(len(v), 2)) for k, v in feats.items()}
    for k in feats:
        write_features_store(fdir / f"{k}.zarr", feats[k], coords[k])
    write_features_store(fdir / "bad.zarr", np.zeros((0, 16), np.float16), np.zeros((0, 2)), "failed", "no tissue")
    (fdir / "s1.zarr.lock").write_text("pid 1\n")  # lock files beside stores are not stores

    out = tmp_path / "clam"
    assert cli.main(["export-clam", "--features-dir", str(fdir), "--out", str(out)]) == 0

    assert sorted(p.name for p in (out / "h5_files").iterdir()) == ["s1.h5", "s2.h5"]
    assert sorted(p.name for p in (out / "pt_files").iterdir()) == ["s1.pt", "s2.pt"]
    for k in feats:
        with h5py.File(out / "h5_files" / f"{k}.h5", "r") as h5:
            assert set(h5.keys()) == {"coords", "features"}
            assert h5["features"].shape == (len(feats[k]), 16) and h5["features"].dtype == np.float32
            assert h5["coords"].shape == (len(feats[k]), 2) and h5["coords"].dtype == np.int64
            np.testing.assert_array_equal(h5["coords"][...], coords[k])
            np.testing.assert_array_equal(h5["features"][...], feats[k].astype(np.float32))
            assert h5["coords"].attrs["patch_level"] == 1 and h5["coords"].attrs["patch_size"] == 512
            assert h5.attrs["encoder"] == "efficientnet_lite0" and h5.attrs["slide_id"] == k
        tensor = torch.load(out / "pt_files" / f"{k}.pt", weights_only=True)
        assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
        assert tuple(tensor.shape) == (len(feats[k]), 16)
        assert torch.equal(tensor, torch.from_numpy(feats[k].astype(np.float32)))


def test_export_clam_empty_folder_is_an_error(tmp_path):
    (tmp_path / "f").mkdir()
    assert cli.main(["export-clam", "--features-dir", str(tmp_path / "f"), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("missing", ["zarr.json"])
def test_unfinished_store_is_not_exported(tmp_path, missing, capfd):
    fdir = tmp_path / "f"
    (fdir / "half.zarr").mkdir(parents=True)  # a directory without zarr.json: not finished
    assert cli.main(["export-clam", "--features-dir", str(fdir), "--out", str(tmp_path / "o")]) == 1
    err = capfd.readouterr().err  # the stage logs to stderr (what Snakemake sends to the rule's log)
    assert "half.zarr" in err and "rerun" in err
    assert not (tmp_path / "o").exists()
