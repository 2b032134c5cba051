"""Damaged stores never read as data, and failures say where (issue 13, items 1 and 3).

A chunk of a finished feature or tiles store that is deleted, truncated or swapped for another
valid chunk makes the reading stage (train, infer, features) exit non-zero with a message that
names the slide, the store and the command that rebuilds it. Stores written before the
integrity records still read (with a warning), and a lost float chunk is still caught. A full
disk while training says so, with the space a fold needs. Real Zarr stores, real CLI, a real
tmpfs (skipped where it cannot be mounted).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import ghanet_rundir as rd
import numpy as np
import pandas as pd
import pytest
import zarr
from test_features import CMU, grid_coords, write_tiles_store
from test_train import write_cohort

from ghanet_pipeline import cli
from ghanet_pipeline.io import store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def damage(store_path: Path, array: str, how: str, donor: Path | None = None) -> Path:
    """Damage chunk 0 of ``array``: delete it, cut it in half, or replace it by ``donor``'s chunk 0."""
    chunk = store_path / array / "c" / "0" / "0"
    assert chunk.is_file(), f"expected a chunk file at {chunk}"
    if how == "deleted":
        chunk.unlink()
    elif how == "truncated":
        data = chunk.read_bytes()
        chunk.write_bytes(data[: len(data) // 2])
    elif how == "swapped":  # a valid chunk of the same shape: decodes fine, wrong data
        assert donor is not None
        shutil.copyfile(donor / array / "c" / "0" / "0", chunk)
    else:
        raise ValueError(how)
    return chunk


def assert_names_the_store(text: str, slide_id: str, store_path: Path) -> None:
    assert f"slide {slide_id}" in text, text
    assert str(store_path) in text, text
    assert f"rm -r {store_path.absolute()}" in text and "rerun" in text, text


# ----------------------------------------------------------------------------- the reader itself


def sealed_store(path: Path, data: np.ndarray, chunk_rows: int = 4) -> zarr.Group:
    with store.atomic_path(path) as tmp:
        group = store.create_group(tmp, {"ghanet_store": "features", "status": "ok", "slide_id": path.stem,
                                         "tiles_store": "/run/tiles/S.zarr", "slide_path": "/slides/S.svs"})
        store.write_array(group, "features", data, chunk_rows=chunk_rows)
    return store.open_store(path)


def test_read_array_checks_rows_chunks_and_checksums(tmp_path):
    data = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float16)
    path = tmp_path / "features" / "enc" / "S.zarr"
    group = sealed_store(path, data)
    assert np.array_equal(store.read_array(group, "features"), data)
    assert np.array_equal(store.read_array(group, "features", slice(3, 9)), data[3:9])  # crosses chunks
    arr = group["features"]
    assert np.isnan(arr.fill_value), "a float array's fill value must not pass as data"
    assert arr.attrs[store.INTEGRITY_ATTR]["rows"] == 10 and len(arr.attrs[store.INTEGRITY_ATTR]["chunks"]) == 3

    # Chunk 2 replaced by chunk 1 (same shape, decodes fine): only the checksum can tell.
    shutil.copyfile(path / "features" / "c" / "1" / "0", path / "features" / "c" / "2" / "0")
    assert np.array_equal(store.read_array(group, "features", slice(0, 8)), data[:8])  # untouched chunks still read
    with pytest.raises(store.DamagedStoreError, match=r"rows 8-10 do not match their checksum") as info:
        store.read_array(store.open_store(path), "features")
    assert_names_the_store(str(info.value), "S", path)
    assert "ghanet features --tiles /run/tiles/S.zarr --slide-path /slides/S.svs" in str(info.value)


def test_an_all_zero_chunk_is_written_so_its_absence_is_damage(tmp_path):
    # zarr skips chunks equal to the fill value unless told otherwise: a (0, 0) coords row would
    # otherwise have no chunk file, and a lost chunk could not be told from it.
    path = tmp_path / "tiles" / "S.zarr"
    with store.atomic_path(path) as tmp:
        group = store.create_group(tmp, {"ghanet_store": "tiles", "status": "ok", "slide_id": "S"})
        store.write_array(group, "coords", np.zeros((1, 2), np.int64))
    assert (path / "coords" / "c" / "0" / "0").is_file()
    (path / "coords" / "c" / "0" / "0").unlink()
    with pytest.raises(store.DamagedStoreError, match=r"chunk file coords/c/0/0 is missing") as info:
        store.read_array(store.open_store(path), "coords")
    assert "ghanet tissue --slide-id S" in str(info.value)


def test_store_without_zarr_json_is_damaged_and_still_a_file_not_found(tmp_path):
    path = tmp_path / "features" / "enc" / "S.zarr"
    sealed_store(path, np.ones((4, 2), np.float16))
    (path / "zarr.json").unlink()
    with pytest.raises(store.DamagedStoreError, match="no zarr.json") as info:
        store.open_store(path)
    assert isinstance(info.value, FileNotFoundError)
    assert_names_the_store(str(info.value), "S", path)


# ----------------------------------------------------------------------------- train


@pytest.fixture
def cohort(tmp_path) -> tuple[Path, Path]:
    # Every slide has 20 patches, so one slide's chunk is a valid stand-in for another's.
    return write_cohort(tmp_path / "cohort", n_patients=10, patches=(20, 20), two_slides=0)


def run_train(genomics_dir: Path, features_dir: Path, out: Path, **settings) -> int:
    return cli.main(["train", "--model", "ghanet", "--fold", "0", "--genomics-dir", str(genomics_dir),
                     "--features-dir", str(features_dir), "--out", str(out),
                     "--settings", json.dumps({"epochs": 1, "device": "cpu", **settings})])


@pytest.mark.parametrize("how", ["deleted", "truncated", "swapped"])
def test_damaged_feature_chunk_fails_train_naming_slide_store_and_rebuild(cohort, tmp_path, capsys, how):
    genomics_dir, features_dir = cohort
    victim = features_dir / "P003-S0.zarr"
    damage(victim, "features", how, donor=features_dir / "P004-S0.zarr")
    out = tmp_path / "fold0"
    assert run_train(genomics_dir, features_dir, out) == 1
    err = capsys.readouterr().err
    assert_names_the_store(err, "P003-S0", victim)
    assert "damaged" in (out / "train.log").read_text()
    assert not (out / "checkpoint_final.pt").exists()


# ----------------------------------------------------------------------------- infer


def build_run(root: Path) -> rd.RunDir:
    """The tiny run folder of the infer tests, each slide id with its own (absent) slide file."""
    run = rd.build(root, folds=1)
    run.slides["path"] = [str(root / "slides" / f"{slide_id}.svs") for slide_id in run.slides.slide_id]
    run.slides.to_csv(run.samples_csv, index=False)
    return run


def run_infer(run: rd.RunDir, out: Path) -> int:
    return cli.main(["infer", "--models-dir", str(run.models_dir), "--samples", str(run.samples_csv),
                     "--features-dir", str(run.features_dir), "--out-dir", str(out),
                     "--settings", json.dumps({"device": "cpu", "top_k": 0})])


@pytest.mark.parametrize("how", ["deleted", "truncated"])
@pytest.mark.parametrize("array", ["features", "coords"])
def test_damaged_feature_store_fails_infer_naming_slide_store_and_rebuild(tmp_path, capsys, how, array):
    run = build_run(tmp_path / "run")
    victim = run.features_dir / "S-single.zarr"
    damage(victim, array, how)
    out = tmp_path / "out"
    assert run_infer(run, out) == 1
    assert_names_the_store(capsys.readouterr().err, "S-single", victim)
    assert not (out / "predictions.csv").exists() and not (out / "heatmaps").exists()


def rewrite_as_legacy(path: Path) -> None:
    """The same store as written before integrity records: plain arrays, fill 0, empty chunks skipped."""
    old = store.open_store(path)
    attrs, arrays = dict(old.attrs), {name: np.asarray(old[name][...]) for name in ("features", "coords")}
    with store.atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.attrs.update(attrs)
        for name, data in arrays.items():
            group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=data.shape)[...] = data


def test_store_without_integrity_records_still_reads_and_a_lost_float_chunk_is_caught(tmp_path, capsys):
    run = build_run(tmp_path / "run")
    legacy = run.features_dir / "S-single.zarr"
    rewrite_as_legacy(legacy)
    assert not store.has_integrity(store.open_store(legacy)["features"])
    assert run_infer(run, tmp_path / "ok") == 0
    assert "predates integrity records" in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "ok" / "predictions.csv", dtype={"case_id": str})
    p1 = table[table.case_id == "P1"].iloc[0]
    assert p1.status == "ok" and p1.risk == pytest.approx(run.fold_risks[0]["P1"], rel=1e-4, abs=1e-5)

    damage(legacy, "features", "deleted")
    assert run_infer(run, tmp_path / "bad") == 1
    assert_names_the_store(capsys.readouterr().err, "S-single", legacy)


# ----------------------------------------------------------------------------- features (tiles store)


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_damaged_tiles_chunk_fails_features_naming_it(tmp_path, capsys, how):
    tiles = write_tiles_store(tmp_path / "out" / "tiles" / "CMU-1.zarr", CMU, grid_coords(2220, 2967, 256, 8))
    damage(tiles, "coords", how)
    out = tmp_path / "out" / "features" / "efficientnet_lite0" / "CMU-1.zarr"
    code = cli.main(["features", "--tiles", str(tiles), "--slide-path", str(CMU), "--out", str(out),
                     "--settings", json.dumps({"weights": "random", "num_workers": 0, "batch_size": 4})])
    assert code != 0
    err = capsys.readouterr().err
    assert_names_the_store(err, "CMU-1", tiles)
    assert f"ghanet tissue --slide-id CMU-1 --slide-path {CMU}" in err
    assert not out.exists(), "no feature store may be written from a damaged tiles store"


# ----------------------------------------------------------------------------- disk full while training


@pytest.fixture
def tiny_disk(tmp_path):
    """A 20 MB tmpfs: smaller than one G-HANet checkpoint. Needs root (mount); skipped otherwise."""
    mnt = tmp_path / "tiny-disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8); the disk-full test cannot run here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the disk-full test cannot run")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)  # still busy: detach now, freed when closed


def test_disk_full_while_training_says_so_with_the_space_a_fold_needs(cohort, tiny_disk, capsys):
    genomics_dir, features_dir = cohort
    out = tiny_disk / "models" / "ghanet" / "fold0"
    assert run_train(genomics_dir, features_dir, out) == 1
    err = capsys.readouterr().err
    match = re.search(r"disk full while writing (\S+): a ghanet fold needs about (\d+) MB \(resume\.pt ~(\d+) MB "
                      r"\+ two checkpoints ~(\d+) MB each", err)
    assert match, err
    written, need, resume, ckpt = Path(match[1]), int(match[2]), int(match[3]), int(match[4])
    assert written.parent == out and written.suffix == ".pt"
    assert ckpt > 20, "a checkpoint is bigger than the 20 MB disk, which is why the write failed"
    assert abs(resume - 3 * ckpt) <= 2 and abs(need - (resume + 2 * ckpt)) <= 2  # weights + Adam's two moments
    assert re.search(rf"{re.escape(str(tiny_disk))} has \d+ MB free of 2[01] MB", err) and "rerun" in err
    assert "unexpected pos" not in err.split("disk full while writing")[-1]
