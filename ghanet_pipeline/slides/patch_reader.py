"""Fast patch reading: few OpenSlide calls, parallel workers, bounded prefetch.

The grid (level-0 top-left corners, row-major) is cut into fixed batches of consecutive rows
of the tiles store. Inside a batch, patches that lie side by side on one grid row are read
with a single ``read_region`` at the read level (a *run*, up to :data:`MAX_RUN_WIDTH` px wide)
and cut into patches, which are then resized from the read level to the target size. Batches
are read by a torch ``DataLoader`` (one OpenSlide handle per worker process, pinned memory on
CUDA, ``prefetch_factor`` batches ahead per worker), in order, so the output is identical
whatever the number of workers.

A region that fails to decode (a corrupt tile) is re-read patch by patch to find the patches
that fail; they are reported with their level-0 coordinates (``ReadBatch.errors``) and their
rows are flagged in ``ReadBatch.ok``. The caller decides: fail the slide or drop those rows.
OpenSlide handles are unusable after an error, so the worker reopens its handle.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ghanet_pipeline.contracts.tiles import PatchGeometry, TilesStoreAttrs
from ghanet_pipeline.io.store import has_integrity, read_array, require_array
from ghanet_pipeline.slides.regions import read_pixels
from ghanet_pipeline.slides.tiff_tiles import open_tile_reader

log = logging.getLogger(__name__)

# Widest region one read_region call covers (read-level px): bounds memory per call.
MAX_RUN_WIDTH = 4096


@dataclass(frozen=True)
class PatchGrid:
    """Where the patches of one slide are (level-0 top-left corners) and how to read them."""

    slide_path: str
    coords: np.ndarray  # (N, 2) int64 level-0 top-left (x, y), row-major
    geometry: PatchGeometry

    def __len__(self) -> int:
        return int(self.coords.shape[0])


@dataclass
class ReadBatch:
    """Rows ``start:start+len(ok)`` of the grid: patches uint8 (k, H, W, 3), ``ok`` per row."""

    start: int
    patches: torch.Tensor
    ok: np.ndarray  # bool (k,)
    errors: list[tuple[int, int, str]]  # (x, y, message) of the patches that failed

    def pin_memory(self) -> "ReadBatch":  # called by DataLoader(pin_memory=True)
        self.patches = self.patches.pin_memory()
        return self


class PatchReadError(RuntimeError):
    """A patch region could not be decoded; the message names the slide and the coordinates."""


def plan_runs(xy_read: np.ndarray, patch_size_read: int, max_width: int = MAX_RUN_WIDTH) -> list[tuple[int, int]]:
    """Split rows of ``xy_read`` (read-level positions, row-major) into runs read by one call.

    A run continues while the next patch is on the same row (same y) and starts at most one
    patch width after the previous one (adjacent or overlapping: no wasted pixels read), and
    the region stays within ``max_width``.
    """
    runs: list[tuple[int, int]] = []
    n = len(xy_read)
    i = 0
    while i < n:
        j = i + 1
        x0, y0 = xy_read[i]
        while j < n:
            x, y = xy_read[j]
            if y != y0 or x < xy_read[j - 1][0] or x - xy_read[j - 1][0] > patch_size_read:
                break
            if x - x0 + patch_size_read > max_width:
                break
            j += 1
        runs.append((i, j))
        i = j
    return runs


def resize_patch(patch: np.ndarray, size: int) -> np.ndarray:
    """Read-level px -> target px: area average when shrinking, bilinear when enlarging.

    PIL, not OpenCV: OpenCV's thread pool inherited by forked reader workers can deadlock.
    """
    from PIL import Image

    if patch.shape[0] == size and patch.shape[1] == size:
        return patch
    shrink = patch.shape[0] > size
    image = Image.fromarray(patch).resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    return np.asarray(image)


class PatchDataset(Dataset):
    """Item ``i`` = batch ``i`` of the grid, read with few ``read_region`` calls."""

    def __init__(self, grid: PatchGrid, batch_size: int, max_run_width: int = MAX_RUN_WIDTH):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.grid = grid
        self.batch_size = int(batch_size)
        self.max_run_width = int(max_run_width)
        self._slide = None
        self._pid: int | None = None
        self._downsample: float | None = None
        self._tiles = None  # tiff_tiles.TileReader when the read level allows the fast path

    def __len__(self) -> int:
        return (len(self.grid) + self.batch_size - 1) // self.batch_size

    # One handle per process: opened lazily in the worker (never inherited across fork).
    def _handle(self):
        if self._slide is None or self._pid != os.getpid():
            import openslide

            self._slide = openslide.OpenSlide(self.grid.slide_path)
            self._pid = os.getpid()
            self._downsample = float(self._slide.level_downsamples[self.grid.geometry.read_level])
            self._tiles = select_tile_reader(self.grid.slide_path, self._slide, self.grid.geometry.read_level)
        return self._slide

    def close(self) -> None:
        """Close this process's OpenSlide handle (a later read opens a new one)."""
        if self._tiles is not None and self._pid == os.getpid():
            self._tiles.close()
        self._tiles = None
        if self._slide is not None and self._pid == os.getpid():
            try:
                self._slide.close()
            except Exception:  # noqa: BLE001 - a handle in error state may refuse to close
                pass
        self._slide = None

    def _reopen(self) -> None:
        self.close()

    def __getitem__(self, index: int) -> ReadBatch:
        start = index * self.batch_size
        stop = min(len(self.grid), start + self.batch_size)
        return self.read_rows(start, stop)

    def read_rows(self, start: int, stop: int) -> ReadBatch:
        grid = self.grid
        slide = self._handle()
        ds = self._downsample or 1.0
        coords = grid.coords[start:stop]
        xy_read = np.rint(coords / ds).astype(np.int64)
        psr, ps = grid.geometry.patch_size_read, grid.geometry.patch_size
        out = np.empty((len(coords), ps, ps, 3), np.uint8)
        ok = np.ones(len(coords), bool)
        errors: list[tuple[int, int, str]] = []
        for i, j in plan_runs(xy_read, psr, self.max_run_width):
            width = int(xy_read[j - 1][0] - xy_read[i][0]) + psr
            try:
                region = self._read((int(coords[i][0]), int(coords[i][1])), (width, psr))
            except Exception as err:  # noqa: BLE001 - OpenSlideError and friends: find the bad patches
                log.debug("region of rows %d:%d failed (%s); reading patch by patch", start + i, start + j, err)
                self._reopen()
                region = None
            for k in range(i, j):
                if region is not None:
                    off = int(xy_read[k][0] - xy_read[i][0])
                    patch = region[:, off : off + psr]
                else:
                    x, y = int(coords[k][0]), int(coords[k][1])
                    try:
                        patch = self._read((x, y), (psr, psr))
                    except Exception as err:  # noqa: BLE001
                        self._reopen()
                        ok[k] = False
                        errors.append((x, y, f"{type(err).__name__}: {err}"))
                        out[k] = 255
                        continue
                out[k] = resize_patch(patch, ps)
        del slide
        return ReadBatch(start=start, patches=torch.from_numpy(out), ok=ok, errors=errors)

    def _read(self, location: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        slide = self._handle()
        ds = self._downsample or 1.0
        if self._tiles is not None and location[0] % ds == 0 and location[1] % ds == 0:
            return self._tiles.read(int(location[0] // ds), int(location[1] // ds), int(size[0]), int(size[1]))
        return read_pixels(slide, location, self.grid.geometry.read_level, size)


def select_tile_reader(slide_path: str, slide, level: int):
    """The JPEG-tile fast path for ``level`` (same pixels as OpenSlide, checked), or None for OpenSlide.

    Off when the environment sets ``GHANET_TILE_READER=0``.
    """
    if os.environ.get("GHANET_TILE_READER", "1") == "0":
        return None
    return open_tile_reader(slide_path, slide, level)


def _worker_init(_: int) -> None:
    # One thread per reader worker. Do not touch OpenCV's thread pool here: resizing it in a
    # forked child destroys condition variables of the parent's pool and can hang forever.
    torch.set_num_threads(1)


def _identity(batch: ReadBatch) -> ReadBatch:
    return batch


def iterate_batches(
    grid: PatchGrid,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
    prefetch: int = 4,
    max_run_width: int = MAX_RUN_WIDTH,
) -> Iterator[ReadBatch]:
    """Yield the batches of ``grid`` in order; ``num_workers=0`` reads in this process.

    The slide handle this process opened is closed when the iteration ends, fails or the
    generator is closed (use ``contextlib.closing`` around a loop that may stop early).
    """
    dataset = PatchDataset(grid, batch_size, max_run_width)  # bad arguments raise here, not at the first batch
    return _iterate(dataset, num_workers, pin_memory, prefetch)


def _iterate(dataset: PatchDataset, num_workers: int, pin_memory: bool, prefetch: int) -> Iterator[ReadBatch]:
    if len(dataset) == 0:
        return
    workers = max(0, min(int(num_workers), len(dataset)))
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_identity,
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers else None,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
    )
    try:
        yield from loader
    finally:
        dataset.close()


def read_patch_naive(slide, grid: PatchGrid, index: int) -> np.ndarray:
    """The baseline the benchmark compares with: one region read per patch, then resize."""
    x, y = (int(v) for v in grid.coords[index])
    geometry = grid.geometry
    patch = read_pixels(slide, (x, y), geometry.read_level, (geometry.patch_size_read,) * 2)
    return resize_patch(patch, geometry.patch_size)


def grid_from_store(tiles, slide_path: str | Path, store_path: str | Path = "") -> PatchGrid:
    """A :class:`PatchGrid` from an open tiles store (contract: ``TilesStoreAttrs`` + ``coords``)."""
    attrs = TilesStoreAttrs.from_attrs(dict(tiles.attrs), source=store_path)
    if not has_integrity(require_array(tiles, "coords")):
        log.warning("tiles store of slide %s predates integrity records: a deleted coords chunk cannot be detected; "
                    "rebuild it to add checksums", attrs.slide_id)
    # Through the checking reader: a damaged tiles store raises DamagedStoreError, never a wrong grid.
    coords = read_array(tiles, "coords").astype(np.int64, copy=False).reshape(-1, 2)
    return PatchGrid(slide_path=str(slide_path), coords=coords, geometry=attrs.geometry(source=store_path))
