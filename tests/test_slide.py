"""Slide access: mpp resolution order, level choice by mpp, strip reads (real OpenSlide reads)."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from ghanet_pipeline.slides import regions
from ghanet_pipeline.slides import slide as sl
from ghanet_pipeline.slides import synthetic

TARGET, PATCH = 0.5, 256  # 128 um patches


# ----------------------------------------------------------------------------- mpp sources


def test_mpp_order_sheet_then_properties_then_tiff_then_power_then_default():
    props = {
        "openslide.mpp-x": "0.2525",
        "openslide.mpp-y": "0.2527",
        "tiff.XResolution": "20000",
        "tiff.ResolutionUnit": "centimeter",
        "openslide.objective-power": "20",
    }
    assert sl.resolve_mpp(props, "s", sheet_mpp=0.3) == sl.Mpp(0.3, "sample_sheet")
    got = sl.resolve_mpp(props, "s")
    assert got.source == "slide_properties" and got.value == pytest.approx(0.2526)
    no_mpp = {k: v for k, v in props.items() if not k.startswith("openslide.mpp")}
    assert sl.resolve_mpp(no_mpp, "s") == sl.Mpp(pytest.approx(0.5), "tiff_resolution")  # 1e4 um / 20000 px
    inch = {"tiff.XResolution": "101600", "tiff.YResolution": "101600", "tiff.ResolutionUnit": "inch"}
    assert sl.resolve_mpp(inch, "s").value == pytest.approx(0.25)
    power_only = {"openslide.objective-power": "40", "tiff.ResolutionUnit": "inch"}
    assert sl.resolve_mpp(power_only, "s") == sl.Mpp(pytest.approx(0.25), "objective_power")
    assert sl.resolve_mpp({}, "s", default_mpp=0.46) == sl.Mpp(0.46, "config_default")


def test_screen_dpi_is_not_a_microscope_resolution():
    # boxes.tiff-like: 72 dpi written by a generic TIFF writer = 352 um/px; ignored, falls through
    props = {"openslide.mpp-x": "352.77", "openslide.mpp-y": "352.77", "tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"}
    assert sl.resolve_mpp(props, "s", default_mpp=0.5).source == "config_default"


def test_no_mpp_anywhere_names_the_fix():
    with pytest.raises(sl.SlideError) as err:
        sl.resolve_mpp({"tiff.ResolutionUnit": "inch"}, "/data/x.svs")
    text = str(err.value)
    assert "/data/x.svs" in text and "'mpp' column" in text and "default_slide_mpp" in text


def test_real_slides_mpp(test_slides):
    with sl.open_slide(test_slides.cmu) as slide:
        assert sl.resolve_mpp(slide.properties, "cmu") == sl.Mpp(pytest.approx(0.499), "slide_properties")
    with sl.open_slide(test_slides.no_mpp) as slide:  # JPEG 2000 Aperio, no resolution recorded
        with pytest.raises(sl.SlideError, match="no microns-per-pixel"):
            sl.resolve_mpp(slide.properties, "tcga")


@pytest.mark.parametrize("kind", ["unopenable", "broken", "missing"])
def test_unopenable_slides_raise_slide_error_with_path(test_slides, kind):
    path = getattr(test_slides, kind)
    with pytest.raises(sl.SlideError) as err:
        sl.open_slide(path)
    assert str(path) in str(err.value)


def test_pixel_read_failure_names_the_path(test_slides):
    path = test_slides.unreadable
    with sl.open_slide(path) as slide, pytest.raises(sl.SlideError) as err:
        regions.read_region_rgb(slide, path, (0, 0), 0, (16, 16))
    assert "reading pixels" in str(err.value) and str(path) in str(err.value)


# ----------------------------------------------------------------------------- level arithmetic


def test_level_choice_by_mpp_with_tolerance():
    # 0.25 um/px pyramid with 4x levels: 0.25, 1.0, 4.0
    downsamples = (1.0, 4.0, 16.0)
    c = sl.choose_level(downsamples, 0.25, 0.5, 256, 0.1)
    assert (c.read_level, c.patch_size_read, c.patch_size_level0, c.upsampled) == (0, 512, 512, False)
    c = sl.choose_level(downsamples, 0.25, 2.0, 256, 0.1)  # finest level not coarser than 2.0: level 1 (1.0)
    assert (c.read_level, c.patch_size_read, c.patch_size_level0) == (1, 512, 2048)
    c = sl.choose_level(downsamples, 0.25, 1.05, 224, 0.1)  # level 1 is within 10 %: read as is
    assert (c.read_level, c.patch_size_read, c.effective_mpp) == (1, 224, pytest.approx(1.0))
    c = sl.choose_level(downsamples, 0.25, 1.2, 224, 0.1)  # 1.0 is 17 % off: resize 269 -> 224
    assert c.read_level == 1 and c.patch_size_read == 269 and abs(c.effective_mpp / 1.2 - 1) < 0.01
    c = sl.choose_level((1.0,), 1.0, 0.5, 256, 0.1)  # level 0 coarser than the target: upsample
    assert c.upsampled and c.patch_size_level0 == 128 and c.effective_mpp == pytest.approx(0.5)


def _smooth(width: int, height: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 256, size=(height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("mpp", [0.25, 0.5, 1.0])
def test_same_physical_patch_at_every_scanner_resolution(tmp_path, mpp):
    path = tmp_path / f"s{mpp}.svs"
    synthetic.write_aperio_svs_from_array(path, _smooth(1024, 768), mpp=mpp, levels=2, downsample=4)
    with sl.open_slide(path) as slide:
        found = sl.resolve_mpp(slide.properties, path)
        assert found == sl.Mpp(pytest.approx(mpp), "slide_properties")
        c = sl.choose_level(slide.level_downsamples, found.value, TARGET, PATCH, 0.1)
    assert c.patch_size_level0 * found.value == pytest.approx(PATCH * TARGET)  # 128 um
    assert abs(c.effective_mpp / TARGET - 1) <= 0.1
    assert c.patch_size_read * c.read_level_mpp == pytest.approx(PATCH * TARGET)


def test_strip_reads_equal_one_read(tmp_path, monkeypatch):
    import cv2

    image = _smooth(900, 700)
    path = tmp_path / "s.svs"
    synthetic.write_aperio_svs_from_array(path, image, mpp=0.5, levels=1)
    with sl.open_slide(path) as slide:
        whole = regions.read_level_resized(slide, path, 0, (225, 175))
        monkeypatch.setattr(regions, "STRIP_PIXELS", 900 * 40)  # 10 output rows per strip
        strips = regions.read_level_resized(slide, path, 0, (225, 175))
        full = regions.read_region_rgb(slide, path, (0, 0), 0, (900, 700))
    np.testing.assert_array_equal(whole, strips)
    np.testing.assert_array_equal(whole, cv2.resize(full, (225, 175), interpolation=cv2.INTER_AREA))


def test_transparent_pixels_become_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    out = regions.rgba_to_rgb(rgba)
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 1].tolist() == [255, 255, 255]


def test_synthetic_slide_without_any_resolution_needs_one(tmp_path):
    path = tmp_path / "s.svs"
    synthetic.write_aperio_svs_from_array(path, _smooth(300, 200), mpp=None, app_mag=None, levels=1)
    with openslide.OpenSlide(str(path)) as slide, pytest.raises(sl.SlideError, match="default_slide_mpp"):
        sl.resolve_mpp(slide.properties, path)
