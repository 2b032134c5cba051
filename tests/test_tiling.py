"""The vectorised patch grid against brute force on level-0 masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ghanet_pipeline.slides import tiling


def _brute_fraction(level0: np.ndarray, x: int, y: int, size: int) -> float:
    """Tissue fraction counted pixel by pixel on the level-0 mask (outside = no tissue)."""
    return level0[y : y + size, x : x + size].sum() / size**2


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    factor=st.integers(1, 7),
    size=st.integers(3, 40),
    step=st.integers(1, 30),
)
def test_fractions_are_exact_where_edges_fall_between_mask_pixels(seed, factor, size, step):
    rng = np.random.default_rng(seed)
    mask = (rng.random((13, 17)) < 0.5).astype(np.uint8)
    level0 = np.kron(mask, np.ones((factor, factor), np.uint8))  # each mask px = factor^2 level-0 px
    height, width = level0.shape
    xs = tiling.candidate_origins(width, size, step)
    ys = tiling.candidate_origins(height, size, step)
    got = tiling.box_fractions(tiling.integral_image(mask), xs, ys, size, factor)
    want = np.array([[_brute_fraction(level0, x, y, size) for x in xs] for y in ys]).reshape(len(ys), len(xs))
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_grid_keeps_threshold_order_and_bounds():
    rng = np.random.default_rng(0)
    mask = (rng.random((50, 60)) < 0.6).astype(np.uint8)
    downsample, size = 4.0, 10
    level0 = np.kron(mask, np.ones((4, 4), np.uint8))
    grid = tiling.patch_grid(mask, None, downsample, (240, 200), size, size, 0.6)
    assert grid.coords.dtype == np.int64 and grid.coords.shape[1] == 2 and len(grid.coords) > 0
    assert grid.n_candidates == 24 * 20
    # row-major: sorted by y, then x
    order = np.lexsort((grid.coords[:, 0], grid.coords[:, 1]))
    np.testing.assert_array_equal(order, np.arange(len(grid.coords)))
    kept = {tuple(c) for c in grid.coords}
    for y in range(0, 200 - size + 1, size):
        for x in range(0, 240 - size + 1, size):
            assert ((x, y) in kept) == (_brute_fraction(level0, x, y, size) >= 0.6)
    assert (grid.coords[:, 0] + size <= 240).all() and (grid.coords[:, 1] + size <= 200).all()


def test_patch_centred_on_an_artifact_is_dropped():
    mask = np.ones((40, 40), np.uint8)
    artifacts = np.zeros((40, 40), bool)
    artifacts[13:27, 13:27] = True  # a blot over the centres of the 4 middle patches
    grid = tiling.patch_grid(mask, artifacts, 1.0, (40, 40), 10, 10, 0.5)
    coords = {tuple(c) for c in grid.coords}
    assert len(coords) == 16 - 4 and grid.n_dropped_artifact == 4
    for x, y in coords:
        assert not artifacts[y + 5, x + 5]


def test_overlap_step_and_no_room():
    assert tiling.step_for(512, 0.0) == 512 and tiling.step_for(512, 0.25) == 384
    assert tiling.candidate_origins(100, 40, 30).tolist() == [0, 30, 60]
    assert tiling.candidate_origins(30, 40, 30).size == 0
    grid = tiling.patch_grid(np.ones((5, 5), np.uint8), None, 8.0, (30, 30), 40, 40, 0.5)
    assert grid.coords.shape == (0, 2) and grid.n_candidates == 0


@pytest.mark.parametrize("threshold", [0.0, 0.25, 1.0])
def test_empty_mask_gives_nothing_above_zero(threshold):
    grid = tiling.patch_grid(np.zeros((20, 20), np.uint8), None, 2.0, (40, 40), 8, 8, threshold)
    assert len(grid.coords) == (25 if threshold == 0.0 else 0)
