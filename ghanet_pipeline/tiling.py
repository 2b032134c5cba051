"""The patch grid: which level-0 squares hold enough tissue, computed for all at once.

The tissue fraction of every candidate patch comes from one integral image (summed-area
table) of the low-resolution tissue mask, sampled bilinearly at the patch edges. The
integral of a pixel-constant mask is exactly bilinear inside each mask pixel, so the
fractions are exact area fractions even where patch edges fall between mask pixels, and the
cost is four lookups per patch whatever the patch or slide size (no per-patch polygon tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    coords: np.ndarray  # (N, 2) int64 level-0 top-left (x, y), row-major (y, then x)
    fractions: np.ndarray  # (N,) float32 tissue fraction of each kept patch
    n_candidates: int
    n_dropped_artifact: int  # candidates with enough tissue but centred on pen or debris


def candidate_origins(length: int, patch: int, step: int) -> np.ndarray:
    """Top-left positions along one axis of patches lying wholly inside ``length`` px."""
    if patch > length:
        return np.zeros(0, np.int64)
    return np.arange(0, length - patch + 1, step, dtype=np.int64)


def step_for(patch_level0: int, overlap: float) -> int:
    """Level-0 step between neighbours sharing ``overlap`` (a fraction of the patch)."""
    return max(1, int(round(patch_level0 * (1.0 - overlap))))


def integral_image(mask: np.ndarray) -> np.ndarray:
    """(h + 1, w + 1) summed-area table of a 0/1 mask (int32 while the sums fit, else float64)."""
    import cv2

    depth = cv2.CV_32S if mask.size < 2**31 - 1 else cv2.CV_64F
    return cv2.integral(np.ascontiguousarray(mask, dtype=np.uint8), sdepth=depth)


def _sample(integral: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Integral at fractional mask coordinates, (len(ys), len(xs)), bilinear (exact)."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    ys, xs = np.clip(ys, 0, h), np.clip(xs, 0, w)
    y0 = np.minimum(np.floor(ys).astype(np.int64), max(h - 1, 0))
    x0 = np.minimum(np.floor(xs).astype(np.int64), max(w - 1, 0))
    y1, x1 = np.minimum(y0 + 1, h), np.minimum(x0 + 1, w)
    ay, ax = (ys - y0)[:, None], (xs - x0)[None, :]
    top = integral[np.ix_(y0, x0)] * (1 - ax) + integral[np.ix_(y0, x1)] * ax
    bottom = integral[np.ix_(y1, x0)] * (1 - ax) + integral[np.ix_(y1, x1)] * ax
    return top * (1 - ay) + bottom * ay


def box_fractions(
    integral: np.ndarray, xs: np.ndarray, ys: np.ndarray, size: float, downsample: float
) -> np.ndarray:
    """Mask fraction under every square (xs[j], ys[i], size) given in level-0 px: (ny, nx).

    ``downsample`` is level-0 px per mask px. Area outside the mask counts as no tissue.
    """
    x0, x1 = xs / downsample, (xs + size) / downsample
    y0, y1 = ys / downsample, (ys + size) / downsample
    sums = _sample(integral, y1, x1) - _sample(integral, y0, x1) - _sample(integral, y1, x0) + _sample(integral, y0, x0)
    return sums / (size / downsample) ** 2


def centre_hits(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, size: float, downsample: float) -> np.ndarray:
    """Whether the centre of each square falls on a set pixel of ``mask``: (ny, nx) bool."""
    h, w = mask.shape
    cx = np.clip(((xs + size / 2) / downsample).astype(np.int64), 0, w - 1)
    cy = np.clip(((ys + size / 2) / downsample).astype(np.int64), 0, h - 1)
    return mask[np.ix_(cy, cx)].astype(bool)


def patch_grid(
    tissue: np.ndarray,
    artifacts: np.ndarray | None,
    downsample: float,
    level0_size: tuple[int, int],
    patch_level0: int,
    step_level0: int,
    min_fraction: float,
) -> Grid:
    """Patches of ``patch_level0`` px every ``step_level0`` px kept where the tissue fraction
    is at least ``min_fraction`` and the centre is not on an artifact (pen, debris)."""
    width, height = level0_size
    xs = candidate_origins(width, patch_level0, step_level0)
    ys = candidate_origins(height, patch_level0, step_level0)
    n_candidates = len(xs) * len(ys)
    if n_candidates == 0 or tissue.size == 0:
        return Grid(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), n_candidates, 0)
    fractions = box_fractions(integral_image(tissue), xs, ys, patch_level0, downsample)
    enough = fractions >= min_fraction - 1e-9
    keep = enough
    n_artifact = 0
    if artifacts is not None and artifacts.any():
        on_artifact = centre_hits(artifacts, xs, ys, patch_level0, downsample)
        keep = enough & ~on_artifact
        n_artifact = int((enough & on_artifact).sum())
    iy, ix = np.nonzero(keep)  # row-major: y, then x
    coords = np.stack([xs[ix], ys[iy]], axis=1).astype(np.int64)
    return Grid(coords, fractions[iy, ix].astype(np.float32), n_candidates, n_artifact)
