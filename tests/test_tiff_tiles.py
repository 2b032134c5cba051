"""The JPEG-tile fast path gives exactly OpenSlide's pixels, or is not used at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest

from ghanet_pipeline.contracts.tiles import PatchGeometry
from ghanet_pipeline.slides.patch_reader import PatchDataset, PatchGrid, iterate_batches
from ghanet_pipeline.slides.regions import read_pixels, rgba_to_rgb
from ghanet_pipeline.slides.synthetic import write_aperio_svs_from_array
from ghanet_pipeline.slides.tiff_tiles import TileReader, open_tile_reader

# shipped real slide (tests/data/slides/README.md): Aperio, JPEG tiles of 240 px, 2220 x 2967
CMU = Path(__file__).resolve().parent / "data" / "slides" / "CMU-1-Small-Region.svs"

def openslide_region(slide, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The public ``read_region`` at level px (x, y), as RGB (outside the slide: white)."""
    ds = slide.level_downsamples[level]
    return rgba_to_rgb(np.asarray(slide.read_region((round(x * ds), round(y * ds)), level, (w, h))))


def assert_same_pixels(path: Path, level: int, regions: list[tuple[int, int, int, int]]) -> TileReader:
    with openslide.OpenSlide(str(path)) as slide:
        reader = open_tile_reader(str(path), slide, level)
        assert reader is not None, f"{path.name} level {level}: fast path not taken"
        for x, y, w, h in regions:
            got = reader.read(x, y, w, h)
            assert got.shape == (h, w, 3) and got.dtype == np.uint8
            want = openslide_region(slide, level, x, y, w, h)
            diff = int(np.abs(got.astype(int) - want).max())
            assert diff == 0, f"{path.name} level {level} region {(x, y, w, h)}: max diff {diff}"
        reader.close()
    return reader


def test_cmu_regions_equal_openslide():
    width, height = 2220, 2967
    regions = [
        (0, 0, 256, 256),  # first tile and part of its neighbours
        (240, 240, 240, 240),  # exactly one tile
        (100, 130, 256, 256),  # straddles four tiles
        (17, 1000, 1024, 256),  # a run of patches across tile columns
        (width - 256, height - 256, 256, 256),  # bottom-right edge tiles (partial in the file)
        (width - 100, height - 50, 256, 256),  # past the slide: white outside
        (-30, -20, 256, 256),  # before the slide
        (width + 5, 0, 64, 64),  # wholly outside
    ]
    assert_same_pixels(CMU, 0, regions)


def test_cmu_block_reader_same_as_openslide_path(monkeypatch):
    xs, ys = np.meshgrid(np.arange(0, 2220, 200), np.arange(0, 2967, 700))
    coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
    grid = PatchGrid(str(CMU), coords, PatchGeometry(read_level=0, patch_size_read=256, patch_size=224))
    fast = PatchDataset(grid, batch_size=8)
    fast._handle()
    assert fast._tiles is not None
    fast.close()
    got = np.concatenate([b.patches.numpy() for b in iterate_batches(grid, 8, 0)])
    monkeypatch.setenv("GHANET_TILE_READER", "0")
    slow = PatchDataset(grid, batch_size=8)
    slow._handle()
    assert slow._tiles is None
    slow.close()
    want = np.concatenate([b.patches.numpy() for b in iterate_batches(grid, 8, 0)])
    assert np.array_equal(got, want)


@pytest.fixture(scope="module")
def demo_slide(tmp_path_factory) -> Path:
    rng = np.random.default_rng(7)
    h, w = 1104, 1296  # not tile multiples: partial edge tiles at every level; levels /4 /16 exact
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([120 + 80 * np.sin(xx / 37.0), 90 + 60 * np.cos(yy / 23.0), 160 + 40 * np.sin((xx + yy) / 51.0)], -1)
    rgb = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("tiles") / "demo.svs"
    write_aperio_svs_from_array(path, rgb, mpp=0.5, levels=3, downsample=4, quality=85)
    return path


def test_demo_slide_levels_equal_openslide(demo_slide):
    with openslide.OpenSlide(str(demo_slide)) as slide:
        dims = slide.level_dimensions
    assert len(dims) >= 2
    for level, (w, h) in enumerate(dims):
        regions = [(0, 0, min(256, w), min(256, h)), (w // 3, h // 3, 300, 200), (w - 70, h - 90, 128, 128), (-5, h - 3, 40, 40)]
        assert_same_pixels(demo_slide, level, regions)


def test_demo_slide_level1_block_reader_same_as_openslide_path(demo_slide, monkeypatch):
    coords = np.array([[0, 0], [256, 0], [512, 0], [1024, 512], [1200, 1000]], np.int64)  # level-0 px, multiples of 4
    grid = PatchGrid(str(demo_slide), coords, PatchGeometry(read_level=1, patch_size_read=64, patch_size=32))
    got = np.concatenate([b.patches.numpy() for b in iterate_batches(grid, 2, 0)])
    monkeypatch.setenv("GHANET_TILE_READER", "0")
    want = np.concatenate([b.patches.numpy() for b in iterate_batches(grid, 2, 0)])
    assert np.array_equal(got, want)


@pytest.mark.parametrize("kind", ["boxes", "no_mpp"], ids=["deflate-tiff", "jpeg2000-svs"])
def test_other_compression_falls_back_to_openslide(kind, test_slides):
    path = getattr(test_slides, kind)  # generic TIFF with deflate tiles; Aperio with JPEG 2000 tiles
    with openslide.OpenSlide(str(path)) as slide:
        for level in range(slide.level_count):
            assert open_tile_reader(str(path), slide, level) is None
    grid = PatchGrid(str(path), np.array([[0, 0], [16, 16]], np.int64), PatchGeometry(read_level=0, patch_size_read=32, patch_size=32))
    dataset = PatchDataset(grid, batch_size=2)
    batch = dataset[0]
    assert dataset._tiles is None and batch.ok.all()
    with openslide.OpenSlide(str(path)) as slide:
        assert np.array_equal(batch.patches.numpy()[1], read_pixels(slide, (16, 16), 0, (32, 32)))
    dataset.close()


def test_corrupt_tile_same_outcome_as_openslide_path(demo_slide, tmp_path, monkeypatch):
    """A damaged tile (not one the sample check reads) fails or decodes the same way on both paths."""
    import tifffile

    data = bytearray(demo_slide.read_bytes())
    with tifffile.TiffFile(demo_slide) as tif:
        page = tif.pages[0]
        tiles_x = -(-int(page.imagewidth) // int(page.tilewidth))
        index = 1 * tiles_x + 1  # tile (1, 1): the check samples columns/rows first, middle, last only
        off, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
    data[off + count // 3 : off + count - 2] = bytes(count - 2 - count // 3)  # zero the entropy-coded data
    bad = tmp_path / "bad.svs"
    bad.write_bytes(bytes(data))
    coords = np.array([[0, 0], [256, 256], [300, 280], [768, 0]], np.int64)
    grid = PatchGrid(str(bad), coords, PatchGeometry(read_level=0, patch_size_read=128, patch_size=128))
    dataset = PatchDataset(grid, batch_size=4)
    dataset._handle()
    assert dataset._tiles is not None
    dataset.close()
    fast = list(iterate_batches(grid, 4, 0))
    monkeypatch.setenv("GHANET_TILE_READER", "0")
    slow = list(iterate_batches(grid, 4, 0))
    for f, s in zip(fast, slow, strict=True):
        assert np.array_equal(f.ok, s.ok)
        assert [e[:2] for e in f.errors] == [e[:2] for e in s.errors]
        assert np.array_equal(f.patches.numpy()[f.ok], s.patches.numpy()[s.ok])
    assert slow[0].ok.tolist() == [True, False, False, True]  # the damage is seen (both patches touch tile (1, 1))
