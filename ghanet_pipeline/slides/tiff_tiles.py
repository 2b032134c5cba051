"""Tile-aware fast path for JPEG-tiled TIFF/SVS slides: decode the tiles ourselves.

OpenSlide's ``read_region`` spends most of its time outside the JPEG decoder (ARGB
conversion, its tile cache, locking). For a slide level stored as a tiled, JPEG-compressed,
8-bit RGB TIFF page, this module reads the raw tile bytes with one file handle, decodes them
with libjpeg-turbo through ``simplejpeg`` (accurate DCT and fancy upsampling, as OpenSlide),
keeps the decoded tiles of the current rows in a small cache and cuts regions out of them.

Corrupt tiles: OpenSlide turns every libjpeg warning ("Corrupt JPEG data: ...") into an
error; ``simplejpeg.decode_jpeg(strict=True)`` does the same, so a damaged tile fails on both
paths (imagecodecs/tifffile would decode it silently, which is why they are not used). The
tile stream is the TIFF's abbreviated stream completed with the page's JPEGTables and an Adobe
marker stating the colour transform the TIFF photometric implies (RGB: none, YCbCr: YCbCr),
since libjpeg would otherwise guess YCbCr for Aperio's RGB tiles.

It is only used when it gives the same pixels as OpenSlide: :func:`open_tile_reader` checks
the page layout, then compares sample tiles (corners and the middle, edge tiles included)
with ``read_region`` and returns ``None`` on any mismatch, so the caller keeps OpenSlide.
Pixels outside the level are white, as :func:`ghanet_pipeline.slides.regions.read_pixels` gives.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ghanet_pipeline.slides.regions import read_pixels

log = logging.getLogger(__name__)

JPEG = 7  # TIFF compression tag value
PHOTOMETRIC_TRANSFORM = {2: 0, 6: 1}  # TIFF photometric RGB / YCbCr -> Adobe APP14 transform


def adobe_marker(transform: int) -> bytes:
    """An Adobe APP14 segment telling libjpeg the colour transform (0: none/RGB, 1: YCbCr)."""
    return b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00" + bytes([transform])


def complete_stream(tile: bytes, tables: bytes | None, transform: int) -> bytes:
    """SOI + Adobe marker + the JPEGTables segments + the tile's segments (after its SOI)."""
    if tile[:2] != b"\xff\xd8":
        raise ValueError("tile does not start with a JPEG SOI marker")
    head = b"\xff\xd8" + adobe_marker(transform)
    if tables:
        if tables[:2] != b"\xff\xd8" or tables[-2:] != b"\xff\xd9":
            raise ValueError("JPEGTables is not an abbreviated JPEG stream")
        head += tables[2:-2]
    return head + tile[2:]
# Decoded tiles kept per reader (bytes): a few rows of tiles of a wide slide.
CACHE_BYTES = 96 * 1024 * 1024


class TileReader:
    """Regions of one TIFF page (one OpenSlide level) from its decoded JPEG tiles."""

    def __init__(self, path: str | Path, page_index: int, cache_bytes: int = CACHE_BYTES):
        import tifffile

        self.path = str(path)
        self._tif = tifffile.TiffFile(self.path)
        try:
            page = self._tif.pages[page_index]
            self._page = page
            self.width = int(page.imagewidth)
            self.height = int(page.imagelength)
            self.tile_w = int(page.tilewidth)
            self.tile_h = int(page.tilelength)
            self.tiles_x = -(-self.width // self.tile_w)
            self.tiles_y = -(-self.height // self.tile_h)
            self._offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            self._counts = np.asarray(page.databytecounts, dtype=np.int64)
            self._tables = bytes(page.jpegtables) if page.jpegtables is not None else None
            self._transform = PHOTOMETRIC_TRANSFORM[int(page.photometric)]
            self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except Exception:
            self._tif.close()
            raise
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_max = max(1, int(cache_bytes) // (self.tile_w * self.tile_h * 3))

    def close(self) -> None:
        for closer in (self._fh.close, self._tif.close):
            try:
                closer()
            except Exception:  # noqa: BLE001
                pass
        self._cache.clear()

    def tile(self, tx: int, ty: int) -> np.ndarray:
        """Decoded tile (tile_h, tile_w, 3) uint8 at tile column ``tx``, row ``ty``."""
        index = ty * self.tiles_x + tx
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        count = int(self._counts[index])
        if count <= 0:
            raise ValueError(f"{self.path}: tile {index} (column {tx}, row {ty}) has no data")
        self._fh.seek(int(self._offsets[index]))
        data = self._fh.read(count)
        if len(data) != count:
            raise ValueError(f"{self.path}: tile {index} is truncated ({len(data)} of {count} bytes)")
        import simplejpeg

        try:
            arr = simplejpeg.decode_jpeg(
                complete_stream(data, self._tables, self._transform), colorspace="RGB", fastdct=False, fastupsample=False, strict=True
            )
        except ValueError as err:
            raise ValueError(f"{self.path}: tile {index} (column {tx}, row {ty}) could not be decoded: {err}") from err
        if arr.shape != (self.tile_h, self.tile_w, 3) or arr.dtype != np.uint8:
            raise ValueError(f"{self.path}: tile {index} decoded to {arr.dtype} {arr.shape}")
        self._cache[index] = arr
        if len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)
        return arr

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Region (h, w, 3) uint8 at level px (x, y); outside the level: white."""
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x1 <= x0 or y1 <= y0:
            return out
        for ty in range(y0 // self.tile_h, (y1 - 1) // self.tile_h + 1):
            ty0 = ty * self.tile_h
            sy0, sy1 = max(y0, ty0), min(y1, ty0 + self.tile_h)
            for tx in range(x0 // self.tile_w, (x1 - 1) // self.tile_w + 1):
                tx0 = tx * self.tile_w
                sx0, sx1 = max(x0, tx0), min(x1, tx0 + self.tile_w)
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = self.tile(tx, ty)[sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0]
        return out


def _tiles_total(page) -> int:
    return -(-int(page.imagewidth) // int(page.tilewidth)) * -(-int(page.imagelength) // int(page.tilelength))


def _sample_tiles(reader: TileReader) -> list[tuple[int, int]]:
    cols = sorted({0, reader.tiles_x // 2, reader.tiles_x - 1})
    rows = sorted({0, reader.tiles_y // 2, reader.tiles_y - 1})
    return [(tx, ty) for ty in rows for tx in cols]


def open_tile_reader(path: str | Path, slide, level: int) -> TileReader | None:
    """A :class:`TileReader` for ``level`` of ``slide`` (OpenSlide, open on ``path``) if its pixels match, else None."""
    try:
        import simplejpeg  # noqa: F401 - the strict decoder; without it, OpenSlide
        import tifffile

        width, height = (int(v) for v in slide.level_dimensions[level])
        with tifffile.TiffFile(path) as tif:
            index = find_page(tif, width, height)
        if index is None:
            return None
        reader = TileReader(path, index)
    except Exception as err:  # noqa: BLE001 - not a TIFF tifffile can read: OpenSlide path
        log.debug("%s: no tile fast path (%s)", path, err)
        return None
    try:
        ds = float(slide.level_downsamples[level])
        for tx, ty in _sample_tiles(reader):
            x, y = tx * reader.tile_w, ty * reader.tile_h
            w = min(reader.tile_w, reader.width - x)
            h = min(reader.tile_h, reader.height - y)
            ref = read_pixels(slide, (int(round(x * ds)), int(round(y * ds))), level, (w, h))
            if not np.array_equal(reader.read(x, y, w, h), ref):
                log.info("%s: decoded tiles differ from OpenSlide at level %d; using OpenSlide", path, level)
                reader.close()
                return None
    except Exception as err:  # noqa: BLE001
        log.debug("%s: tile fast path check failed (%s)", path, err)
        reader.close()
        return None
    return reader


def find_page(tif, width: int, height: int) -> int | None:
    """Index of the tiled 8-bit RGB JPEG page of exactly ``width`` x ``height``, or None."""
    for i, page in enumerate(tif.pages):
        try:
            if int(page.imagewidth) != width or int(page.imagelength) != height:
                continue
            ok = (
                page.is_tiled
                and int(page.compression) == JPEG
                and int(page.samplesperpixel) == 3
                and int(page.bitspersample) == 8
                and int(page.planarconfig) == 1
                and int(page.imagedepth) == 1
                and int(page.photometric) in PHOTOMETRIC_TRANSFORM
                and len(page.dataoffsets) == _tiles_total(page)
            )
            return i if ok else None
        except Exception:  # noqa: BLE001 - an odd page: not ours
            return None
    return None
