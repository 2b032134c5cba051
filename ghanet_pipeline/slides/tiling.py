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
    n_dropped_artifact: int  # candidates with enough tissue but centred on pen or debris (or too much of it)
    n_past_edge: int = 0  # kept patches running past the right/bottom slide edge (read as white there)
    artifact_fractions: np.ndarray | None = None  # (N,) float32 pen/debris share of each kept patch
    n_fill: int = 0  # kept patches added off the regular grid by the gap filler


def candidate_origins(length: int, patch: int, step: int, past_edge: bool = False) -> np.ndarray:
    """Top-left positions along one axis of patches lying wholly inside ``length`` px; with
    ``past_edge`` also those that start inside but run past the end (the outside is background)."""
    if past_edge:
        return np.arange(0, max(length, 0), step, dtype=np.int64)
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


def _evaluate(
    tissue_integral: np.ndarray,
    artifacts: np.ndarray | None,
    artifact_integral: np.ndarray | None,
    xs: np.ndarray,
    ys: np.ndarray,
    size: int,
    downsample: float,
    min_fraction: float,
    max_artifact_fraction: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(keep, enough tissue, tissue fractions, artifact fractions), each (ny, nx), for the squares at xs x ys."""
    fractions = box_fractions(tissue_integral, xs, ys, size, downsample)
    enough = fractions >= min_fraction - 1e-9
    art = np.zeros_like(fractions)
    bad = np.zeros(enough.shape, bool)
    if artifacts is not None:
        bad = centre_hits(artifacts, xs, ys, size, downsample)
        if artifact_integral is not None:
            art = box_fractions(artifact_integral, xs, ys, size, downsample)
            bad |= art > max_artifact_fraction + 1e-9
    return enough & ~bad, enough, fractions, art


def patch_grid(
    tissue: np.ndarray,
    artifacts: np.ndarray | None,
    downsample: float,
    level0_size: tuple[int, int],
    patch_level0: int,
    step_level0: int,
    min_fraction: float,
    past_edge: bool = False,
    max_artifact_fraction: float | None = None,
    fill_min_new: float | None = None,
    fill_max_overlap: float = 1.0,
) -> Grid:
    """Patches of ``patch_level0`` px every ``step_level0`` px kept where the tissue fraction
    is at least ``min_fraction`` and the centre is not on an artifact (pen, debris).

    ``past_edge``: patches may run past the right/bottom edge; the part outside counts as no
    tissue, so ``min_fraction`` keeps its meaning (share of the whole patch).
    ``max_artifact_fraction``: a patch is also dropped when more than that share of it is
    ``artifacts``. ``fill_min_new``: after the regular grid, patches on the grid shifted by
    quarter and eighth steps are added where they hold ``min_fraction`` tissue (and pass the artifact
    rules), at least this share of them is tissue no patch kept so far covers, and at most
    ``fill_max_overlap`` of them lies on kept patches: thin or ragged tissue that no grid cell
    holds half of still gets patches. Coordinates come back
    row-major (y, then x).
    """
    width, height = level0_size
    xs = candidate_origins(width, patch_level0, step_level0, past_edge)
    ys = candidate_origins(height, patch_level0, step_level0, past_edge)
    n_candidates = len(xs) * len(ys)
    if n_candidates == 0 or tissue.size == 0:
        return Grid(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), n_candidates, 0)
    tissue_integral = integral_image(tissue)
    if artifacts is not None and not artifacts.any():
        artifacts = None
    artifact_integral = None
    if artifacts is not None and max_artifact_fraction is not None:
        artifact_integral = integral_image(artifacts)
    args = (patch_level0, downsample, min_fraction, max_artifact_fraction)
    keep, enough, fractions, art = _evaluate(tissue_integral, artifacts, artifact_integral, xs, ys, *args)
    n_artifact = int((enough & ~keep).sum())
    iy, ix = np.nonzero(keep)
    parts = [(xs[ix], ys[iy], fractions[iy, ix], art[iy, ix])]
    if fill_min_new is not None and len(iy) + 1 < n_candidates:
        extra, n_extra_candidates, n_extra_artifact = _fill_gaps(
            parts[0][0], parts[0][1], tissue, tissue_integral, artifacts, artifact_integral, level0_size,
            step_level0, past_edge, fill_min_new, args, fill_max_overlap,
        )  # fmt: skip
        parts += extra
        n_candidates += n_extra_candidates
        n_artifact += n_extra_artifact
    n_fill = sum(len(part[0]) for part in parts[1:])
    px, py, pf, pa = (np.concatenate(v) for v in zip(*parts))
    order = np.lexsort((px, py))  # row-major: y, then x
    coords = np.stack([px[order], py[order]], axis=1).astype(np.int64)
    n_past = int(((coords[:, 0] + patch_level0 > width) | (coords[:, 1] + patch_level0 > height)).sum())
    return Grid(
        coords, pf[order].astype(np.float32), n_candidates, n_artifact, n_past, pa[order].astype(np.float32), n_fill
    )


# Shifts tried by the gap filler, in eighths of a step: first the quarter steps, half steps first
# (they reach the most new area), then the odd eighths row by row, which reach tissue wedged
# between ink and glass (demo truth: coverage 96.5 % -> 97.1 % for 4 % more patches).
def _shifts(divisions: int) -> list[tuple[int, int]]:
    return sorted(
        ((i, j) for i in range(divisions) for j in range(divisions) if (i, j) != (0, 0)),
        key=lambda ij: (-(min(ij[0], divisions - ij[0]) + min(ij[1], divisions - ij[1])), ij),
    )


_FILL_SHIFTS = [(2 * i, 2 * j) for i, j in _shifts(4)] + [(i, j) for i in range(8) for j in range(8) if i % 2 or j % 2]


class _Coverage:
    """Which mask pixels the kept patches cover (a pixel is covered when its centre lies inside
    a patch), and the integral images the gap filler reads, redone only after patches are added."""

    def __init__(self, tissue: np.ndarray, patch: int, downsample: float) -> None:
        self.uncovered = tissue.astype(np.uint8, copy=True)  # tissue no kept patch covers
        self.covered = np.zeros(tissue.shape, np.uint8)
        self.patch, self.downsample = patch, downsample
        self._integrals: dict[str, np.ndarray] = {}

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        h, w = self.covered.shape
        edges = [np.ceil(v / self.downsample - 0.5).astype(np.int64).tolist() for v in (y, y + self.patch, x, x + self.patch)]
        for a, b, c, d in zip(*edges):
            self.uncovered[max(0, a) : min(h, b), max(0, c) : min(w, d)] = 0
            self.covered[max(0, a) : min(h, b), max(0, c) : min(w, d)] = 1
        self._integrals.clear()

    def fractions(self, which: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Share of each candidate square on ``uncovered`` tissue or on ``covered`` pixels."""
        if which not in self._integrals:
            self._integrals[which] = integral_image(getattr(self, which))
        return box_fractions(self._integrals[which], xs, ys, self.patch, self.downsample)


def _fill_gaps(
    kept_x: np.ndarray,
    kept_y: np.ndarray,
    tissue: np.ndarray,
    tissue_integral: np.ndarray,
    artifacts: np.ndarray | None,
    artifact_integral: np.ndarray | None,
    level0_size: tuple[int, int],
    step: int,
    past_edge: bool,
    min_new: float,
    args: tuple,
    max_overlap: float = 1.0,
) -> tuple[list, int, int]:
    """Patches of the grid shifted by quarter and eighth steps that bring at least ``min_new`` (a share of
    the patch) of tissue no kept patch covers yet and share at most ``max_overlap`` of their
    area with kept patches."""
    patch, width, height = args[0], level0_size[0], level0_size[1]
    coverage = _Coverage(tissue, patch, args[1])
    coverage.add(kept_x, kept_y)
    parts, n_candidates, n_artifact = [], 0, 0
    for i, j in _FILL_SHIFTS:
        if not coverage.uncovered.any():
            break
        sx, sy = i * step // 8, j * step // 8
        xs = candidate_origins(width - sx, patch, step, past_edge) + sx
        ys = candidate_origins(height - sy, patch, step, past_edge) + sy
        if len(xs) == 0 or len(ys) == 0:
            continue
        n_candidates += len(xs) * len(ys)
        new = coverage.fractions("uncovered", xs, ys)
        wanted = (new >= min_new - 1e-9) if min_new > 0 else new > 0
        if not wanted.any():
            continue
        # evaluate only the rows and columns of candidates that would bring new tissue
        rows, cols = wanted.any(axis=1), wanted.any(axis=0)
        xs, ys, wanted = xs[cols], ys[rows], wanted[np.ix_(rows, cols)]
        keep, enough, fractions, art = _evaluate(tissue_integral, artifacts, artifact_integral, xs, ys, *args)
        n_artifact += int((wanted & enough & ~keep).sum())
        keep &= wanted
        if max_overlap < 1.0 and keep.any():
            keep &= coverage.fractions("covered", xs, ys) <= max_overlap + 1e-9
        iy, ix = np.nonzero(keep)
        if len(iy):
            parts.append((xs[ix], ys[iy], fractions[iy, ix], art[iy, ix]))
            coverage.add(xs[ix], ys[iy])
    return parts, n_candidates, n_artifact


# ----------------------------------------------------------------------------- patch budget
# Nonsense settings (target_mpp 1e-9, overlap 0.99) would otherwise plan millions of patches and
# days of feature extraction for one slide; tissue.max_patches_per_slide stops them here.

# A candidate costs about 60 bytes while the grid is computed; past this many candidates per
# allowed patch the grid is not computed at all.
CANDIDATES_PER_ALLOWED_PATCH = 20
# An estimate from the tissue area this many times over the limit fails before the grid.
ESTIMATE_MARGIN = 4


class TooManyPatches(ValueError):
    """A slide's patch grid holds (or would hold) more patches than the limit."""

    def __init__(self, what: str, count: int, limit: int):
        self.what, self.count, self.limit = what, count, limit
        super().__init__(f"{what}, over the limit of {limit:,} patches per slide")


def _positions(length: int, step: int) -> int:
    """Upper bound of the patch origins along one axis (also counting patches past the edge)."""
    return max(0, -(-int(length) // max(1, int(step))))


def check_grid_size(
    tissue: np.ndarray, downsample: float, level0_size: tuple[int, int], step_level0: int, max_patches: int
) -> None:
    """Raise :class:`TooManyPatches` before computing a grid that would clearly be too large.

    Estimate: each level-0 px^2 of tissue starts 1 / step^2 patches. Exact enough to catch
    settings that are off by orders of magnitude; the exact count is checked after the grid.
    """
    width, height = level0_size
    n_positions = _positions(width, step_level0) * _positions(height, step_level0)
    estimate = int(np.count_nonzero(tissue) * (float(downsample) / max(1, step_level0)) ** 2)
    if estimate > ESTIMATE_MARGIN * max_patches:
        raise TooManyPatches(f"about {estimate:,} patches (estimated from the tissue area)", estimate, max_patches)
    if n_positions > CANDIDATES_PER_ALLOWED_PATCH * max_patches:
        raise TooManyPatches(
            f"{n_positions:,} grid positions to test (about {estimate:,} patches on tissue), too many to evaluate "
            f"(more than {CANDIDATES_PER_ALLOWED_PATCH} x the limit)",
            n_positions, max_patches,
        )  # fmt: skip


def check_patch_count(grid: Grid, max_patches: int) -> None:
    """Raise :class:`TooManyPatches` when the grid holds more than ``max_patches`` patches."""
    if len(grid.coords) > max_patches:
        raise TooManyPatches(f"{len(grid.coords):,} patches", len(grid.coords), max_patches)
