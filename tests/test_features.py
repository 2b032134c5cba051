"""`ghanet features` on real slides: finite N x D features, coords row for row, determinism,
interrupted runs, the store lock, failed tiles stores and corrupt tiles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.contracts.tiles import PatchGeometry
from ghanet_pipeline.features.extract import StoreLockedError, exclusive_lock, extract
from ghanet_pipeline.io import store
from ghanet_pipeline.slides.patch_reader import (
    PatchGrid,
    iterate_batches,
    plan_runs,
    read_patch_naive,
)

REPO = Path(__file__).resolve().parents[1]
CMU = REPO / "tests" / "data" / "slides" / "CMU-1-Small-Region.svs"  # shipped real slide
N_PATCHES = 16  # 2 grid rows of CMU-1-Small-Region at 256 px
BATCH = 4


def level0_geometry(read: int, size: int) -> PatchGeometry:
    """Patches of ``read`` level-0 px resized to ``size``."""
    return PatchGeometry(read_level=0, patch_size=size, patch_size_read=read, patch_size_level0=read)


def write_tiles_store(
    path: Path,
    slide: Path,
    coords: np.ndarray,
    status: str = "ok",
    reason: str = "",
    patch_size: int = 256,
    patch_size_read: int = 256,
    read_level: int = 0,
    downsample: float = 1.0,
) -> Path:
    """A tiles store as the tissue stage writes it (contract 'tiles'), for the patches given."""
    attrs = {
        "ghanet_store": "tiles",
        "status": status,
        "reason": reason,
        "slide_id": path.name.removesuffix(".zarr"),
        "source_path": str(slide),
        "target_mpp": 0.5 * patch_size_read * downsample / patch_size,
        "effective_mpp": 0.5 * patch_size_read * downsample / patch_size,
        "read_level": read_level,
        "read_downsample": downsample,
        "patch_size": patch_size,
        "patch_size_read": patch_size_read,
        "patch_size_level0": int(patch_size_read * downsample),
        "step_level0": int(patch_size_read * downsample),
    }
    with store.atomic_path(path) as tmp:
        group = store.create_group(tmp, attrs)
        store.write_array(group, "coords", np.asarray(coords, dtype=np.int64).reshape(-1, 2))
    return path


def grid_coords(width: int, height: int, size: int, n: int | None = None, y0: int = 0) -> np.ndarray:
    xs = np.arange(0, width - size + 1, size)
    ys = np.arange(y0, height - size + 1, size)
    coords = np.array([(x, y) for y in ys for x in xs], dtype=np.int64)
    return coords if n is None else coords[:n]


def settings(**overrides):
    values = {"batch_size": BATCH, "num_workers": 1, **overrides}
    return stage_settings("features", None, json.dumps(values))


@pytest.fixture(scope="module")
def cmu_tiles(tmp_path_factory) -> Path:
    # Rows 4-5 of the grid: tissue in the middle of the slide. 256 px read at level 0
    # (0.5 um/px), resized to 128 px (1 um/px): the resize path, and a quarter of the compute.
    coords = grid_coords(2220, 2967, 256, N_PATCHES, y0=4 * 256)
    path = tmp_path_factory.mktemp("tiles") / "CMU-1-Small-Region.zarr"
    return write_tiles_store(path, CMU, coords, patch_size=128, patch_size_read=256)


@pytest.fixture(scope="module")
def reference(cmu_tiles, tmp_path_factory) -> Path:
    """One clean run with the default encoder (the embedded ImageNet EfficientNet-Lite0)."""
    out = tmp_path_factory.mktemp("ref") / "CMU-1-Small-Region.zarr"
    assert extract(cmu_tiles, CMU, out, settings()) == "ok"
    return out


def test_default_encoder_features_match_the_grid(reference, cmu_tiles):
    group = store.open_store(reference)
    attrs = dict(group.attrs)
    feats = group["features"][...]
    assert feats.shape == (N_PATCHES, 1280)
    assert feats.dtype == np.float16
    assert np.isfinite(feats).all()
    # Non-degenerate: patches differ from each other, and features are not all zero.
    assert np.abs(feats).mean() > 1e-3
    assert np.std(feats.astype(np.float32), axis=0).mean() > 1e-3
    np.testing.assert_array_equal(group["coords"][...], store.open_store(cmu_tiles)["coords"][...])
    assert attrs["status"] == "ok" and attrs["ghanet_store"] == "features"
    assert attrs["encoder"] == "efficientnet_lite0" and attrs["dim"] == 1280
    assert attrs["weights"] != "random" and len(attrs["weights_sha256"]) == 64
    assert attrs["n_bad_patches"] == 0 and attrs["tiles_store"] == str(cmu_tiles)
    for key in ("patch_size", "target_mpp", "effective_mpp", "dtype", "package_version", "slide_id"):
        assert key in attrs


def test_killed_run_leaves_no_store_and_rerun_is_complete_and_identical(reference, cmu_tiles, tmp_path):
    """SIGKILL mid-slide: nothing promoted; the rerun redoes the slide, equal to a clean run."""
    out = tmp_path / "features" / "CMU-1-Small-Region.zarr"
    cmd = [
        sys.executable, "-m", "ghanet_pipeline", "features", "-v", "--tiles", str(cmu_tiles),
        "--slide-path", str(CMU), "--out", str(out),
        "--settings", json.dumps({"batch_size": BATCH, "num_workers": 1}),
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "batch 1/" in line:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert not out.exists(), "an interrupted run promoted its store"
    leftovers = list(out.parent.glob(f"{out.name}.tmp-*"))
    assert leftovers, "the interrupted run should have left its temporary store"
    assert all(not (p / "zarr.json").exists() or json.loads((p / "zarr.json").read_text())["attributes"]["status"]
               == "incomplete" for p in leftovers)

    assert extract(cmu_tiles, CMU, out, settings()) == "ok"
    assert not list(out.parent.glob(f"{out.name}.tmp-*")), "the rerun left temporaries behind"
    again, first = store.open_store(out), store.open_store(reference)
    np.testing.assert_array_equal(again["features"][...], first["features"][...])
    np.testing.assert_array_equal(again["coords"][...], first["coords"][...])


def test_a_second_writer_is_refused_naming_the_first(cmu_tiles, tmp_path):
    out = tmp_path / "f.zarr"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from ghanet_pipeline.features.extract import exclusive_lock\n"
         "with exclusive_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid} "):
            extract(cmu_tiles, CMU, out, settings())
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()
    lock = out.with_name(out.name + ".lock")
    assert lock.exists() and lock.parent == out.parent  # the lock lives beside the store, not in it
    with exclusive_lock(out):  # released when its holder died, even by SIGKILL
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            extract(cmu_tiles, CMU, out, settings())


def test_failed_tiles_store_gives_failed_features_store(tmp_path):
    tiles = write_tiles_store(
        tmp_path / "tiles" / "bad.zarr", CMU, np.zeros((0, 2)), status="failed", reason="no tissue found"
    )
    out = tmp_path / "features" / "bad.zarr"
    assert extract(tiles, CMU, out, settings(weights="random")) == "failed"
    group = store.open_store(out)
    assert group.attrs["status"] == "failed"
    assert "no tissue found" in group.attrs["reason"]
    assert group.attrs["weights"] == "random"
    assert group["features"].shape == (0, 1280) and group["coords"].shape == (0, 2)


def test_failed_inputs_record_a_failed_store_without_building_the_encoder(tmp_path):
    """Weights that do not exist are never touched for a slide that fails anyway: the store is
    written from the registry spec (dim), or with D = 0 for a timm name without a spec."""
    missing_weights = str(tmp_path / "no-such-checkpoint.pt")
    tiles = write_tiles_store(tmp_path / "t" / "bad.zarr", CMU, np.zeros((0, 2)), status="failed", reason="blurry")
    out = tmp_path / "f" / "bad.zarr"
    assert extract(tiles, CMU, out, settings(weights=missing_weights)) == "failed"
    attrs = store.open_store(out).attrs
    assert (attrs["encoder"], attrs["dim"], attrs["weights"], attrs["weights_sha256"]) == (
        "efficientnet_lite0", 1280, missing_weights, ""
    )
    assert attrs["reason"] == "tiles stage failed: blurry"
    assert store.open_store(out)["features"].shape == (0, 1280)

    out_timm = tmp_path / "f" / "timm.zarr"
    assert extract(tiles, CMU, out_timm, settings(encoder="vit_tiny_patch16_224", weights=missing_weights)) == "failed"
    group = store.open_store(out_timm)
    assert group.attrs["dim"] == 0 and group["features"].shape == (0, 0) and group["coords"].shape == (0, 2)

    gone = tmp_path / "gone.svs"
    tiles_ok = write_tiles_store(tmp_path / "t" / "gone.zarr", gone, grid_coords(512, 512, 256))
    out_gone = tmp_path / "f" / "gone.zarr"
    assert extract(tiles_ok, gone, out_gone, settings(weights=missing_weights)) == "failed"
    reason = store.open_store(out_gone).attrs["reason"]
    assert "slide file not found" in reason and str(gone) in reason, reason


def _open_slide_handles() -> int:
    """OpenSlide handles alive and not closed in this process (openslide-python's handle objects)."""
    import gc

    from openslide import lowlevel

    return sum(1 for o in gc.get_objects() if type(o) is lowlevel._OpenSlide and o._valid)


def test_reader_closes_its_slide_handle():
    """The in-process reader closes its OpenSlide handle when the batches are done, or when
    the caller stops early, not whenever the iterator happens to be garbage-collected."""
    from ghanet_pipeline.slides.patch_reader import PatchDataset

    grid = PatchGrid(str(CMU), grid_coords(2220, 2967, 256, 8, y0=1024), level0_geometry(read=256, size=64))
    before = _open_slide_handles()
    batches = iterate_batches(grid, batch_size=4, num_workers=0)
    next(batches)
    assert _open_slide_handles() == before + 1  # open while reading
    batches.close()  # stopped early
    assert _open_slide_handles() == before

    batches = iterate_batches(grid, batch_size=4, num_workers=0)
    assert sum(len(b.ok) for b in batches) == 8
    assert _open_slide_handles() == before  # exhausted, still referenced: closed

    dataset = PatchDataset(grid, batch_size=4)
    first = dataset[0].patches.numpy()
    dataset.close()
    assert _open_slide_handles() == before
    np.testing.assert_array_equal(dataset[0].patches.numpy(), first)  # reading again reopens
    dataset.close()
    with pytest.raises(ValueError, match="batch_size"):
        iterate_batches(grid, batch_size=0, num_workers=0)  # bad arguments fail at the call


@pytest.fixture(scope="module")
def corrupt_slide(tmp_path_factory) -> tuple[Path, tuple[int, int]]:
    """A small synthetic SVS (4 x 2 patches of 256 px) with one damaged JPEG tile."""
    from ghanet_pipeline.slides import synthetic

    path = tmp_path_factory.mktemp("corrupt") / "corrupt.svs"
    rng = np.random.default_rng(0)
    image = rng.integers(80, 220, size=(512, 1024, 3), dtype=np.uint8)
    synthetic.write_aperio_svs_from_array(path, image, mpp=0.5, tile=256, levels=1)
    index = synthetic.corrupt_tile(path, level=0, index=5, mode="header")
    return path, synthetic.tile_origin(path, index)


def test_corrupt_tile_fails_the_slide_naming_the_patch(corrupt_slide, tmp_path):
    slide, (tx, ty) = corrupt_slide
    tiles = write_tiles_store(tmp_path / "c.zarr", slide, grid_coords(1024, 512, 256), patch_size=64)
    out = tmp_path / "f" / "c.zarr"
    assert extract(tiles, slide, out, settings(weights="random")) == "failed"
    reason = store.open_store(out).attrs["reason"]
    assert f"x={tx}, y={ty}" in reason and "skip_bad_patches" in reason
    assert store.open_store(out)["features"].shape[0] == 0


def test_corrupt_tile_skipped_and_counted(corrupt_slide, tmp_path):
    slide, (tx, ty) = corrupt_slide
    coords = grid_coords(1024, 512, 256)
    tiles = write_tiles_store(tmp_path / "c.zarr", slide, coords, patch_size=64)
    out = tmp_path / "f" / "c.zarr"
    assert extract(tiles, slide, out, settings(weights="random", skip_bad_patches=True, num_workers=0)) == "ok"
    group = store.open_store(out)
    kept = group["coords"][...]
    assert group.attrs["n_bad_patches"] == 1 and group.attrs["bad_patches"] == [[tx, ty]]
    assert kept.shape == (len(coords) - 1, 2) and group["features"].shape == (len(coords) - 1, 1280)
    expected = np.array([c for c in coords if tuple(c) != (tx, ty)])
    np.testing.assert_array_equal(kept, expected)
    assert np.isfinite(group["features"][...]).all()


def test_block_reader_equals_one_read_per_patch_with_resize(tmp_path):
    """Runs of patches read at once, cut and resized, give the pixels of per-patch reads."""
    import openslide

    coords = grid_coords(2220, 2967, 300, 14, y0=600)
    coords = np.delete(coords, 3, axis=0)  # a gap: the row splits into two runs
    grid = PatchGrid(str(CMU), coords, level0_geometry(read=300, size=224))
    assert len(plan_runs(coords, 300)) >= 3
    batches = list(iterate_batches(grid, batch_size=5, num_workers=0))
    got = np.concatenate([b.patches.numpy() for b in batches])
    assert got.shape == (len(coords), 224, 224, 3)
    with openslide.OpenSlide(str(CMU)) as slide:
        for i in range(len(coords)):
            np.testing.assert_array_equal(got[i], read_patch_naive(slide, grid, i))


def test_fast_region_read_equals_openslide_read_region(test_slides):
    """The buffer-level read gives read_region's pixels, at slide edges (transparent) too."""
    import openslide

    from ghanet_pipeline.slides.regions import read_pixels, rgba_to_rgb

    with openslide.OpenSlide(str(test_slides.no_mpp)) as slide:  # JPEG 2000 tiles, two levels
        w, h = slide.dimensions
        for level in range(slide.level_count):
            for loc, size in [((0, 0), (300, 200)), ((w - 333, h - 333), (512, 512)), ((-50, -20), (128, 128))]:
                expected = rgba_to_rgb(np.asarray(slide.read_region(loc, level, size)))
                np.testing.assert_array_equal(read_pixels(slide, loc, level, size), expected)
