"""Fuzz the microns-per-pixel resolution and the read-level arithmetic of ``slide.py``.

For random pyramids, resolutions, targets and tolerances: the chosen level is never coarser
than ``target * (1 + tolerance)`` (unless level 0 itself is, and then it is level 0), it is the
coarsest level that fine, and a patch covers the physical size asked for
(``patch_size_level0 * mpp ~= patch_size * target_mpp``, up to the tolerance and one pixel of
rounding). Any slide properties give a plausible mpp or a SlideError, nothing else.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from ghanet_pipeline.slides import slide as sl

FUZZ = settings(max_examples=200, deadline=None)

factors = st.lists(st.floats(min_value=1.5, max_value=4.5), min_size=0, max_size=6)
mpps = st.floats(min_value=0.05, max_value=4.0)
targets = st.floats(min_value=0.1, max_value=16.0)
tolerances = st.floats(min_value=0.0, max_value=0.5)
patch_sizes = st.integers(min_value=16, max_value=1024)


def pyramid(steps: list[float]) -> list[float]:
    downsamples = [1.0]
    for f in steps:
        downsamples.append(downsamples[-1] * f)
    return downsamples


@FUZZ
@given(factors, mpps, targets, tolerances)
def test_pick_level_is_the_coarsest_level_fine_enough(steps, mpp, target, tol):
    downsamples = pyramid(steps)
    level = sl.pick_level(downsamples, mpp, target, tol)
    limit = target * (1 + tol)
    fine_enough = [i for i, d in enumerate(downsamples) if mpp * d <= limit]
    if fine_enough:
        assert mpp * downsamples[level] <= limit  # never coarser than asked
        assert all(downsamples[i] <= downsamples[level] for i in fine_enough)  # and no finer than needed
    else:
        assert level == 0  # even level 0 is coarser: read it (and upsample)


@FUZZ
@given(factors, mpps, targets, tolerances, patch_sizes)
def test_patch_covers_the_requested_physical_size(steps, mpp, target, tol, patch_size):
    downsamples = pyramid(steps)
    c = sl.choose_level(downsamples, mpp, target, patch_size, tol)
    assert 0 <= c.read_level < len(downsamples) and c.read_downsample == downsamples[c.read_level]
    assert c.patch_size_read >= 1 and c.patch_size_level0 >= 1
    assert c.upsampled == (c.read_level_mpp > target * (1 + tol))
    if not c.upsampled:
        assert c.read_level_mpp <= target * (1 + tol) * (1 + 1e-12)
    want = patch_size * target  # um covered by a patch
    got = c.patch_size_level0 * mpp
    assert math.isclose(c.effective_mpp, got / patch_size, rel_tol=1e-9)
    if patch_size * target / c.read_level_mpp >= 1:  # the patch is at least one read-level pixel
        rounding = 0.5 * (c.read_level_mpp + mpp)  # half a read-level px, then half a level-0 px
        assert abs(got - want) <= max(tol * want, rounding) + 1e-9 * want, (got, want, c)


prop_value = st.one_of(
    st.text(max_size=12),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "-0.25", "1e-320", "1e400", "nan", "0.2527", "72", "1e-300", "40", "20"]),
)
props = st.dictionaries(
    st.sampled_from(["openslide.mpp-x", "openslide.mpp-y", "tiff.XResolution", "tiff.YResolution",
                     "tiff.ResolutionUnit", "openslide.objective-power"]),  # fmt: skip
    st.one_of(prop_value, st.sampled_from(["inch", "centimeter", "millimeter", "micrometer", "INCH"])),
)


@FUZZ
@given(props, st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), st.one_of(st.none(), mpps))
def test_any_properties_give_a_plausible_mpp_or_a_slide_error(properties, sheet_mpp, default_mpp):
    try:
        mpp = sl.resolve_mpp(properties, "/data/x.svs", sheet_mpp, default_mpp)
    except sl.SlideError as err:
        assert "/data/x.svs" in str(err)
        return
    assert math.isfinite(mpp.value) and mpp.value > 0
    if mpp.source == "sample_sheet":
        assert mpp.value == sheet_mpp
    elif mpp.source == "config_default":
        assert mpp.value == default_mpp
    else:
        assert sl.PLAUSIBLE_MPP[0] <= mpp.value <= sl.PLAUSIBLE_MPP[1], mpp
