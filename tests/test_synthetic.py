"""The synthetic Aperio SVS writer, checked by reading its output back with OpenSlide."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from ghanet_pipeline.slides import synthetic


def _smooth_image(width: int, height: int, seed: int = 0, cell: int = 64) -> np.ndarray:
    """A smooth colourful image (JPEG keeps it to within a few grey levels)."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _read(slide: openslide.OpenSlide, level: int) -> np.ndarray:
    return np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]).convert("RGB"))


def test_aperio_vendor_mpp_and_pyramid(tmp_path):
    image = _smooth_image(1500, 1100, cell=256)
    path = tmp_path / "s.svs"
    sizes = synthetic.write_aperio_svs_from_array(path, image, mpp=0.25, app_mag=40, levels=3)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        assert slide.properties["openslide.objective-power"] == "40"
        assert slide.level_count == 3
        assert list(slide.level_dimensions) == sizes == [(1500, 1100), (375, 275), (93, 68)]
        assert slide.level_downsamples[1] == pytest.approx(4.0)
        # level 0 matches the source within JPEG error (random region, edges included)
        region = np.asarray(slide.read_region((1300, 900), 0, (200, 200)).convert("RGB")).astype(int)
        assert np.abs(region - image[900:1100, 1300:1500]).mean() < 3
        level0 = _read(slide, 0).astype(int)
        assert np.abs(level0 - image).mean() < 3
        # reduced levels are area-averaged level 0
        import cv2

        for level in (1, 2):
            w, h = slide.level_dimensions[level]
            factor = 4**level
            expected = cv2.resize(image[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA)
            assert np.abs(_read(slide, level).astype(int) - expected).mean() < 4
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3 and all(p.is_tiled and p.tilewidth == 256 for p in tif.pages)
        assert all(p.compression == tifffile.COMPRESSION.JPEG for p in tif.pages)
        assert not tif.pages[0].subifds  # a chain of IFDs, not SubIFDs


def test_tile_fn_sees_each_level0_region_once_and_tiles_line_up(tmp_path):
    calls = []
    image = _smooth_image(700, 530, seed=3)

    def tile_fn(x0, y0, w, h):
        calls.append((x0, y0, w, h))
        return image[y0 : y0 + h, x0 : x0 + w]

    path = tmp_path / "t.svs"
    synthetic.write_aperio_svs(path, 700, 530, tile_fn, tile=256, levels=2, downsample=2)
    # 3 x 3 tiles, edge tiles clipped to the image
    assert len(calls) == 9 and len(set(calls)) == 9
    assert (512, 512, 188, 18) in calls
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_dimensions == ((700, 530), (350, 265))
        assert np.abs(_read(slide, 0).astype(int) - image).mean() < 3


def test_levels_none_goes_until_small(tmp_path):
    assert synthetic.level_sizes(60000, 45000, 4, None) == [(60000, 45000), (15000, 11250), (3750, 2812), (937, 703)]
    assert synthetic.level_sizes(5000, 4000, 2, None)[-1] == (625, 500)
    assert len(synthetic.level_sizes(300, 200, 4, 3)) == 3


def test_mpp_can_be_omitted(tmp_path):
    path = tmp_path / "nompp.svs"
    synthetic.write_aperio_svs_from_array(path, _smooth_image(600, 400), mpp=None, app_mag=None)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert "openslide.mpp-x" not in slide.properties
        assert "openslide.objective-power" not in slide.properties
        assert "aperio.MPP" not in slide.properties
    with tifffile.TiffFile(path) as tif:
        unit = tif.pages[0].tags.get("ResolutionUnit")
        assert unit is None or unit.value == tifffile.RESUNIT.NONE


@pytest.mark.parametrize("mode", ["header", "data"])
def test_corrupt_tile_breaks_only_that_tile(tmp_path, mode):
    path = tmp_path / "bad.svs"
    synthetic.write_aperio_svs_from_array(path, _smooth_image(1024, 768), mpp=0.5)
    index = synthetic.corrupt_tile(path, mode=mode)
    assert index == 6  # 4 x 3 tiles, the middle one
    x, y = synthetic.tile_origin(path, index)
    assert (x, y) == (512, 256)
    assert synthetic.tile_index_at(path, x + 10, y + 200) == index
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.read_region((0, 0), 0, (256, 256)).size == (256, 256)
    with openslide.OpenSlide(str(path)) as slide:
        with pytest.raises(openslide.OpenSlideError):
            slide.read_region((x + 10, y + 10), 0, (64, 64))


def test_bad_tile_fn_output_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="expected uint8"):
        synthetic.write_aperio_svs(tmp_path / "x.svs", 300, 300, lambda x0, y0, w, h: np.zeros((h, w, 3), np.float32))


def test_large_levels_go_through_a_memory_mapped_buffer(tmp_path, monkeypatch):
    """The out-of-memory path (used for gigapixel slides) gives the same pyramid, leaves no temp file."""
    monkeypatch.setattr(synthetic, "_IN_MEMORY_LIMIT", 1000)
    image = _smooth_image(1200, 900, seed=5, cell=256)
    path = tmp_path / "m.svs"
    synthetic.write_aperio_svs_from_array(path, image, levels=3, downsample=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.svs"]
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_dimensions == ((1200, 900), (600, 450), (300, 225))
        import cv2

        expected = cv2.resize(image, (300, 225), interpolation=cv2.INTER_AREA)
        assert np.abs(_read(slide, 2).astype(int) - expected).mean() < 4
