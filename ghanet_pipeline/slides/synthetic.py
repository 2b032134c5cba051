"""Write synthetic whole-slide images that OpenSlide opens as Aperio SVS.

A slide is a tiled, JPEG-compressed pyramidal TIFF: level 0 first, then each reduced
level as the next IFD of the chain (OpenSlide wants a chain, not SubIFDs), with an Aperio
ImageDescription (``Aperio Image Library ...|AppMag = 20|MPP = 0.5``) so OpenSlide reports
vendor ``aperio`` and ``openslide.mpp-x``.

Pixels come from ``tile_fn(x0, y0, w, h) -> uint8 (h, w, 3)``, which renders any level-0
region. Level 0 is written tile by tile, and while it is written each tile is shrunk into
the next level's buffer (in memory when small, a temporary memory-mapped file when large),
so a gigapixel slide is written with bounded memory and every pixel is rendered once.

Also here, for fault tests: :func:`corrupt_tile` damages one JPEG tile of an existing file.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

TileFn = Callable[[int, int, int, int], np.ndarray]

APERIO_HEADER = "Aperio Image Library v12.0.15"
# Above this many bytes of level-0 RGB the reduced-level buffer goes to a memory-mapped file.
_IN_MEMORY_LIMIT = 256 * 1024**2
# Classic TIFF offsets are 32 bit; switch to BigTIFF well before compressed data could reach 4 GiB.
_BIGTIFF_RAW_BYTES = 2 * 1024**3


def aperio_description(
    width: int,
    height: int,
    tile: int,
    quality: int,
    mpp: float | None,
    app_mag: float | None,
) -> str:
    """The level-0 ImageDescription: a header line, then ``key = value`` fields split by ``|``."""
    fields = [f"{APERIO_HEADER} \n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}"]
    if app_mag is not None:
        fields.append(f"AppMag = {_number(app_mag)}")
    if mpp is not None:
        fields.append(f"MPP = {_number(mpp)}")
    fields.append("Filename = synthetic")
    return "|".join(fields)


def _number(value: float) -> str:
    return f"{value:g}" if float(value) != int(value) else str(int(value))


def level_sizes(
    width: int, height: int, downsample: int, levels: int | None, min_side: int = 1024
) -> list[tuple[int, int]]:
    """(w, h) of every pyramid level; ``levels=None`` adds levels until the larger side < ``min_side``."""
    if downsample < 2:
        raise ValueError(f"downsample must be >= 2, got {downsample}")
    sizes = [(width, height)]
    while True:
        w, h = sizes[-1]
        if levels is not None and len(sizes) >= levels:
            break
        if levels is None and max(w, h) < min_side:
            break
        if levels is None and max(w, h) // downsample < 1:
            break
        sizes.append((max(1, w // downsample), max(1, h // downsample)))
    return sizes


def _shrink(block: np.ndarray, factor: int) -> np.ndarray:
    """Area-average ``block`` by ``factor``, padding the edge by replication to a multiple of it."""
    import cv2

    h, w = block.shape[:2]
    ph, pw = (-h) % factor, (-w) % factor
    if ph or pw:
        block = np.pad(block, ((0, ph), (0, pw), (0, 0)), mode="edge")
    h2, w2 = block.shape[0] // factor, block.shape[1] // factor
    return cv2.resize(block, (w2, h2), interpolation=cv2.INTER_AREA)


def _pad_tile(block: np.ndarray, tile: int) -> np.ndarray:
    h, w = block.shape[:2]
    if h == tile and w == tile:
        return np.ascontiguousarray(block)
    out = np.zeros((tile, tile, 3), np.uint8)
    out[:h, :w] = block
    return out


class _LevelBuffer:
    """The next pyramid level, filled while the current one is written."""

    def __init__(self, width: int, height: int, directory: Path):
        # Ceil-sized so edge blocks fit; the level itself is the floor size (cropped on read).
        self.shape = (height, width, 3)
        self._file: str | None = None
        if width * height * 3 > _IN_MEMORY_LIMIT:
            fd, self._file = tempfile.mkstemp(prefix=".pyramid-", suffix=".u8", dir=directory)
            os.close(fd)
            self.array = np.memmap(self._file, dtype=np.uint8, mode="w+", shape=self.shape)
        else:
            self.array = np.zeros(self.shape, np.uint8)

    def close(self) -> None:
        if self._file is not None:
            del self.array
            Path(self._file).unlink(missing_ok=True)
            self._file = None


def _tiles_from_fn(
    tile_fn: TileFn, width: int, height: int, tile: int, factor: int, sink: _LevelBuffer | None
) -> Iterator[np.ndarray]:
    """Level-0 tiles in row-major order; each is also shrunk into ``sink``."""
    from tqdm import tqdm

    n_rows, n_cols = math.ceil(height / tile), math.ceil(width / tile)
    with tqdm(total=n_rows * n_cols, desc="level 0 tiles", unit="tile", disable=n_rows * n_cols < 2000) as bar:
        for ty in range(n_rows):
            for tx in range(n_cols):
                x0, y0 = tx * tile, ty * tile
                w, h = min(tile, width - x0), min(tile, height - y0)
                block = np.asarray(tile_fn(x0, y0, w, h))
                if block.shape != (h, w, 3) or block.dtype != np.uint8:
                    raise ValueError(
                        f"tile_fn({x0}, {y0}, {w}, {h}) returned {block.dtype} {block.shape}; "
                        f"expected uint8 ({h}, {w}, 3)"
                    )
                if sink is not None:
                    small = _shrink(block, factor)
                    sy, sx = y0 // factor, x0 // factor
                    sink.array[sy : sy + small.shape[0], sx : sx + small.shape[1]] = small
                bar.update()
                yield _pad_tile(block, tile)


def _tiles_from_array(
    source: np.ndarray, width: int, height: int, tile: int, factor: int, sink: _LevelBuffer | None
) -> Iterator[np.ndarray]:
    """Tiles of a reduced level held in ``source`` (cropped to width x height)."""
    return _tiles_from_fn(lambda x0, y0, w, h: np.asarray(source[y0 : y0 + h, x0 : x0 + w]), width, height, tile, factor, sink)


def write_aperio_svs(
    path: str | Path,
    width: int,
    height: int,
    tile_fn: TileFn,
    mpp: float | None = 0.5,
    app_mag: float | None = 20,
    tile: int = 256,
    levels: int | None = 3,
    quality: int = 85,
    downsample: int = 4,
    maxworkers: int = 1,
) -> list[tuple[int, int]]:
    """Write a pyramidal Aperio SVS of ``width`` x ``height`` rendered by ``tile_fn``.

    ``mpp=None`` records no resolution at all (a slide whose mpp must come from elsewhere);
    ``app_mag=None`` omits the objective power. Returns the (w, h) of each level written.
    The file is written to ``path`` directly; wrap the call in ``store.atomic_path`` for an
    atomic output.
    """
    import tifffile

    if width < 1 or height < 1:
        raise ValueError(f"slide size must be positive, got {width}x{height}")
    if tile % 16:
        raise ValueError(f"tile size must be a multiple of 16 (TIFF rule), got {tile}")
    path = Path(path)
    sizes = level_sizes(width, height, downsample, levels)
    bigtiff = width * height * 3 > _BIGTIFF_RAW_BYTES
    common = _page_options(tile, quality, mpp, maxworkers)
    log.debug("writing %s: levels %s", path, sizes)
    source: _LevelBuffer | None = None
    try:
        with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
            for index, (w, h) in enumerate(sizes):
                last = index == len(sizes) - 1
                sink = None
                if not last:
                    sink = _LevelBuffer(math.ceil(w / downsample), math.ceil(h / downsample), path.parent)
                if index == 0:
                    tiles = _tiles_from_fn(tile_fn, w, h, tile, downsample, sink)
                    description = aperio_description(w, h, tile, quality, mpp, app_mag)
                else:
                    assert source is not None
                    tiles = _tiles_from_array(source.array, w, h, tile, downsample, sink)
                    description = (
                        f"{APERIO_HEADER} \n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
                        f"-> {w}x{h} JPEG/RGB Q={quality}"
                    )
                tif.write(tiles, shape=(h, w, 3), dtype=np.uint8, description=description, **common)
                if source is not None:
                    source.close()
                source = sink
    finally:
        if source is not None:
            source.close()
    return sizes


def _page_options(tile: int, quality: int, mpp: float | None, maxworkers: int) -> dict:
    """tifffile's write options shared by every level: JPEG tiles, and the resolution when there is one."""
    options = dict(
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": int(quality)},
        tile=(tile, tile),
        metadata=None,
        software=False,
        maxworkers=maxworkers,
    )
    if mpp is not None:
        options.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return options


def write_aperio_svs_from_array(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float | None = 0.5,
    **kwargs,
) -> list[tuple[int, int]]:
    """Write an in-memory RGB image (h, w, 3) uint8 as an Aperio SVS (small images)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (h, w, 3) RGB array, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    return write_aperio_svs(
        path, width, height, lambda x0, y0, w, h: rgb[y0 : y0 + h, x0 : x0 + w], mpp=mpp, **kwargs
    )


def tile_extents(path: str | Path, level: int = 0) -> tuple[list[int], list[int], tuple[int, int]]:
    """``(offsets, byte_counts, (tile_w, tile_h))`` of the tiles of one level (IFD) of a TIFF."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level]
        if not page.is_tiled:
            raise ValueError(f"{path}: IFD {level} is not tiled")
        return list(page.dataoffsets), list(page.databytecounts), (page.tilewidth, page.tilelength)


def tile_index_at(path: str | Path, x: int, y: int, level: int = 0) -> int:
    """Index (row-major) of the tile of ``level`` that holds pixel (x, y) of that level."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level]
        per_row = math.ceil(page.imagewidth / page.tilewidth)
        return (y // page.tilelength) * per_row + (x // page.tilewidth)


def tile_origin(path: str | Path, index: int, level: int = 0) -> tuple[int, int]:
    """Top-left (x, y), in pixels of ``level``, of tile ``index`` (row-major) of that level."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level]
        per_row = math.ceil(page.imagewidth / page.tilewidth)
        return (index % per_row) * page.tilewidth, (index // per_row) * page.tilelength


def corrupt_tile(path: str | Path, level: int = 0, index: int | None = None, mode: str = "header") -> int:
    """Damage one JPEG tile of ``path`` in place; return its index (row-major).

    ``index=None`` takes the middle tile. ``mode="header"`` overwrites the tile's JPEG
    markers (start of image and frame header), so decoding it is a hard error;
    ``mode="data"`` flips the bits of bytes inside its entropy-coded data (garbled pixels
    and decoder warnings, which strict readers treat as errors). Other tiles stay readable.
    """
    offsets, counts, _ = tile_extents(path, level)
    if index is None:
        index = len(offsets) // 2
    if not 0 <= index < len(offsets):
        raise IndexError(f"{path}: level {level} has {len(offsets)} tiles, no tile {index}")
    offset, count = offsets[index], counts[index]
    if count < 64:
        raise ValueError(f"{path}: tile {index} has only {count} bytes; nothing to corrupt")
    with open(path, "r+b") as handle:
        if mode == "header":
            handle.seek(offset)
            handle.write(b"\x00" * min(32, count // 2))
        elif mode == "data":
            start, stop = offset + count // 2, offset + count // 2 + min(64, count // 4)
            handle.seek(start)
            chunk = bytearray(handle.read(stop - start))
            for i in range(len(chunk)):
                chunk[i] ^= 0x5A
                if chunk[i] == 0xFF:  # never forge a JPEG marker
                    chunk[i] = 0x00
            handle.seek(start)
            handle.write(bytes(chunk))
        else:
            raise ValueError(f"mode must be 'header' or 'data', got {mode!r}")
    return index
