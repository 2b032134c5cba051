"""Per-patch focus (blur) scores, computed block-wise over a mid-resolution image with dask.

The score is ``skimage.measure.blur_effect`` (Crete-Roffet et al. 2007) evaluated per patch:
for each axis, the Sobel gradient of the image (``sharp``) and of the image smoothed by an
11-px box along that axis (``blurred``); a patch's score on that axis is
``1 - sum(max(0, sharp - blurred)) / sum(sharp)`` over the patch, and its blur score is the
larger of the two axes: about 0.2-0.4 for sharp tissue, towards 1 when out of focus (a flat
image is 1).

The image is the slide at ``quality_mpp`` (default 1 um/px: a defocus of about 3 um, plain to
the eye at 20x, changes the score little at 2 um/px), a lazily read ``dask.array`` of
grey blocks; the filters run per block with ``map_overlap`` (the border the filters need
comes from the neighbours), the per-pixel sums are reduced per 16 x 16 cell
(``dask.array.coarsen``) and only those cells are kept in memory, so memory stays bounded by
the block size times the number of threads whatever the slide's size. Blocks that hold no
patch are never read. Patch sums come from integral images of the cells (patch edges off the
cell lattice are interpolated).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("ghanet.patch_quality")

H_SIZE = 11  # box width of the re-blur (skimage.measure.blur_effect's default)
CELL = 16  # quality px per side of a cell whose sums are kept
BLOCK = 1024  # quality px per side of a dask block (a multiple of CELL)
DEPTH = H_SIZE // 2 + 2  # overlap the filters need: the box half-width plus Sobel's 1 px, and 1 spare
# Blur flag when no tissue.max_blur is set (report only), at 1 um/px. The demo's out-of-focus
# region (Gaussian sigma 3 um) scores 0.40-0.77, its sharp tissue at most 0.39, the sharp
# tissue of CMU-1-Small-Region and TCGA-CR-7395 less (see benchmarks/tissue.py).
REPORT_BLUR = 0.4


@dataclass(frozen=True)
class QualityPlan:
    level: int  # slide level read
    level_downsample: float  # level-0 px per px of that level
    downsample: float  # level-0 px per quality px
    shape: tuple[int, int]  # (h, w) of the quality image, a multiple of CELL


def plan(slide, mpp: float, quality_mpp: float, tolerance: float) -> QualityPlan:
    from ghanet_pipeline.slides.slide import pick_level

    width, height = slide.level_dimensions[0]
    downsample = max(1.0, quality_mpp / mpp)  # never finer than level 0
    level = pick_level(slide.level_downsamples, mpp, mpp * downsample, tolerance)
    h = int(np.ceil(height / downsample / CELL)) * CELL
    w = int(np.ceil(width / downsample / CELL)) * CELL
    return QualityPlan(level, float(slide.level_downsamples[level]), downsample, (h, w))


# skimage.color.rgb2gray's weights, applied with OpenCV (which releases the GIL: dask's threads run in parallel)
_GREY = np.array([[0.2125, 0.7154, 0.0721]], np.float32) / 255.0


def _grey(rgb: np.ndarray) -> np.ndarray:
    import cv2

    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], np.float32)
    grey = cv2.transform(np.ascontiguousarray(rgb, dtype=np.float32), _GREY)
    return grey.reshape(rgb.shape[:2])


def _read_block(
    slide, path: str, qp: QualityPlan, y0: int, x0: int, h: int, w: int, lock: threading.Lock | None = None
) -> np.ndarray:
    """Grey (h, w) float32 in [0, 1] of quality px [y0, y0 + h) x [x0, x0 + w); outside the slide white.

    ``lock``, when given, serialises the reads of one handle (OpenSlide reads are thread-safe;
    the lock is for slide objects that are not)."""
    import cv2

    from ghanet_pipeline.slides.regions import read_region_rgb

    scale = qp.downsample / qp.level_downsample  # level px per quality px
    location = (int(round(x0 * qp.downsample)), int(round(y0 * qp.downsample)))
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    with lock if lock is not None else contextlib.nullcontext():
        rgb = read_region_rgb(slide, path, location, qp.level, size)
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    return _grey(rgb)


def _axis_sums(block: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(sharp, excess) per pixel on one axis: blur_effect's |sobel| and max(0, |sobel| - |sobel of re-blur|).

    The same filters as ``skimage.filters.sobel(axis=)`` (up to a constant factor, which the
    score's ratio cancels) and ``scipy.ndimage.uniform_filter1d``, run with OpenCV, which
    releases the GIL so dask's threads work in parallel; the test compares with skimage."""
    import cv2

    dx, dy = (0, 1) if axis == 0 else (1, 0)
    box = (1, H_SIZE) if axis == 0 else (H_SIZE, 1)  # OpenCV sizes are (width, height)
    border = cv2.BORDER_REFLECT
    sharp = np.abs(cv2.Sobel(block, cv2.CV_32F, dx, dy, ksize=3, borderType=border))
    blurred = np.abs(cv2.Sobel(cv2.blur(block, box, borderType=border), cv2.CV_32F, dx, dy, ksize=3, borderType=border))
    return sharp, np.maximum(sharp - blurred, 0.0)


def _sums_block(block: np.ndarray, depth: int, needed: bool) -> np.ndarray:
    """Cell sums (h/CELL, w/CELL, 4) of one overlapped block: sharp_y, excess_y, sharp_x, excess_x."""
    core = block[depth:-depth, depth:-depth] if depth else block
    h, w = core.shape
    out = np.zeros((h // CELL, w // CELL, 4), np.float32)
    if not needed:
        return out
    for i, axis in enumerate((0, 1)):
        sharp, excess = _axis_sums(block, axis)
        for j, value in enumerate((sharp, excess)):
            part = value[depth : depth + h, depth : depth + w] if depth else value
            out[..., 2 * i + j] = part.reshape(h // CELL, CELL, w // CELL, CELL).sum(axis=(1, 3))
    return out


def openslide_types() -> tuple[type, ...]:
    """Slide classes whose reads may run in parallel threads (OpenSlide is thread-safe)."""
    import openslide

    return (openslide.OpenSlide,)


def cell_sums(slide, path: str, qp: QualityPlan, needed_blocks: np.ndarray, threads: int | None = None) -> np.ndarray:
    """(h/CELL, w/CELL, 4) float32 cell sums over the quality image, computed block-wise with dask."""
    import dask
    import dask.array as da

    h, w = qp.shape
    chunks = (BLOCK, BLOCK)
    lock = None if isinstance(slide, openslide_types()) else threading.Lock()

    def read(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        iy, ix = block_info[None]["chunk-location"]
        if not needed_blocks[iy, ix]:
            return np.ones((y1 - y0, x1 - x0), np.float32)  # white: never read, never scored
        return _read_block(slide, path, qp, y0, x0, y1 - y0, x1 - x0, lock)

    grey = da.map_blocks(read, dtype=np.float32, chunks=da.core.normalize_chunks(chunks, (h, w)))
    padded = da.overlap.overlap(grey, depth={0: DEPTH, 1: DEPTH}, boundary="reflect")
    out_chunks = tuple(tuple(c // CELL for c in dim) for dim in grey.chunks) + ((4,),)

    def sums(block, block_info=None):
        iy, ix = block_info[0]["chunk-location"]
        return _sums_block(block, DEPTH, bool(needed_blocks[iy, ix]))

    cells = padded.map_blocks(sums, dtype=np.float32, chunks=out_chunks, new_axis=2)
    if not threads or threads <= 1:
        with dask.config.set(scheduler="synchronous"):
            return cells.compute()
    # our own pool, shut down (waiting) before returning or raising: no task may still read
    # from the slide handle once the caller closes it
    pool = ThreadPoolExecutor(threads)
    try:
        with dask.config.set(scheduler="threads", pool=pool):
            return cells.compute()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def needed(qp: QualityPlan, coords: np.ndarray, patch_level0: int) -> np.ndarray:
    """(blocks_y, blocks_x) bool: the dask blocks that some patch touches."""
    ny, nx = -(-qp.shape[0] // BLOCK), -(-qp.shape[1] // BLOCK)
    out = np.zeros((ny, nx), bool)
    span = BLOCK * qp.downsample  # level-0 px per block
    for x, y in np.asarray(coords, np.int64).tolist():
        out[int(y // span) : int((y + patch_level0 - 1) // span) + 1, int(x // span) : int((x + patch_level0 - 1) // span) + 1] = True
    return out


def _box_sums(integral: np.ndarray, xs: np.ndarray, ys: np.ndarray, size: float, unit: float) -> np.ndarray:
    """Sum of a cell image under each square (xs[i], ys[i], size) in level-0 px; ``unit`` = level-0 px per cell.
    The integral is sampled bilinearly, so edges between cells are interpolated."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1

    def at(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        y, x = np.clip(y, 0, h), np.clip(x, 0, w)
        y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 1, 0))
        x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 1, 0))
        y1, x1 = np.minimum(y0 + 1, h), np.minimum(x0 + 1, w)
        ay, ax = y - y0, x - x0
        top = integral[y0, x0] * (1 - ax) + integral[y0, x1] * ax
        bottom = integral[y1, x0] * (1 - ax) + integral[y1, x1] * ax
        return top * (1 - ay) + bottom * ay

    x0, x1, y0, y1 = xs / unit, (xs + size) / unit, ys / unit, (ys + size) / unit
    return at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)


def blur_from_cells(cells: np.ndarray, coords: np.ndarray, patch_level0: int, downsample: float) -> np.ndarray:
    """(N,) float32 blur score of each patch from the cell sums."""
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    xs, ys = coords[:, 0].astype(np.float64), coords[:, 1].astype(np.float64)
    sums = []
    for k in range(4):
        integral = np.zeros((cells.shape[0] + 1, cells.shape[1] + 1), np.float64)
        integral[1:, 1:] = cells[..., k].astype(np.float64).cumsum(0).cumsum(1)
        sums.append(_box_sums(integral, xs, ys, patch_level0, CELL * downsample))
    scores = []
    for sharp, excess in ((sums[0], sums[1]), (sums[2], sums[3])):
        with np.errstate(divide="ignore", invalid="ignore"):
            scores.append(np.where(sharp > 1e-9, np.abs(sharp - excess) / np.maximum(sharp, 1e-9), 1.0))
    return np.clip(np.maximum(scores[0], scores[1]), 0.0, 1.0).astype(np.float32)


def blur_scores(
    slide, path: str, mpp: float, coords: np.ndarray, patch_level0: int, quality_mpp: float, tolerance: float,
    threads: int | None = None,
) -> tuple[np.ndarray, QualityPlan]:
    """(N,) blur score per patch (see the module doc) and the plan used."""
    qp = plan(slide, mpp, quality_mpp, tolerance)
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    if len(coords) == 0:
        return np.zeros(0, np.float32), qp
    cells = cell_sums(slide, path, qp, needed(qp, coords, patch_level0), threads)
    return blur_from_cells(cells, coords, patch_level0, qp.downsample), qp
