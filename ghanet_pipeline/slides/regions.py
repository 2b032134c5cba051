"""Pixels of a slide: the one region reader, a level shrunk in strips, the thumbnail.

Every pixel the pipeline takes from a slide comes through :func:`read_pixels` (patches, blur
scores, segmentation images, thumbnails, heatmap galleries), except the JPEG-tile fast path of
:mod:`ghanet_pipeline.slides.tiff_tiles`, which is used only where it matches these pixels.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

from ghanet_pipeline.slides.slide import REMOVE_HINT, SlideError, open_slide

# Pixels read per read_region call when a level is read in strips (bounds memory).
STRIP_PIXELS = 16 * 1024 * 1024


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """RGB on white: OpenSlide marks pixels outside the scanned area fully transparent."""
    rgb = np.ascontiguousarray(rgba[..., :3])
    alpha = rgba[..., 3]
    if alpha.size and alpha.min() == 0:  # most regions are opaque: skip the mask
        rgb[alpha == 0] = 255
    return rgb


def read_pixels(slide, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    """``slide.read_region`` as RGB uint8 (h, w, 3), the same pixels, about twice as fast.

    OpenSlide fills a buffer of premultiplied ARGB words; ``read_region`` then converts it to
    straight RGBA and wraps it in a PIL image, which costs as much as decoding the JPEG. Here
    the buffer is a numpy array and RGB is one strided copy (opaque pixels: premultiplied =
    straight); the rare partly transparent pixels are un-premultiplied, transparent ones white.
    Falls back to ``read_region`` when openslide-python's low-level call is not available.
    OpenSlide's own errors pass through (callers that retry need the handle's error state).
    """
    from openslide import lowlevel

    w, h = int(size[0]), int(size[1])
    raw = getattr(lowlevel, "_read_region", None)
    handle = getattr(slide, "_osr", None)
    if raw is None or handle is None or sys.byteorder != "little" or w <= 0 or h <= 0:
        return rgba_to_rgb(np.asarray(slide.read_region(location, level, (w, h))))
    buf = np.empty((h, w), dtype=np.uint32)
    raw(handle, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)), int(location[0]), int(location[1]), level, w, h)
    bgra = buf.view(np.uint8).reshape(h, w, 4)  # little-endian 0xAARRGGBB -> bytes B, G, R, A
    rgb = np.ascontiguousarray(bgra[..., 2::-1])
    alpha = bgra[..., 3]
    if alpha.min() < 255:
        part = (alpha > 0) & (alpha < 255)
        if part.any():
            a = alpha[part].astype(np.uint32)[:, None]
            rgb[part] = np.minimum(255, rgb[part].astype(np.uint32) * 255 // a).astype(np.uint8)
        rgb[alpha == 0] = 255
    return rgb


def read_region_rgb(slide, path: str | Path, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    """:func:`read_pixels`; a read error is a :class:`SlideError` naming the path and the fix."""
    import openslide

    try:
        return read_pixels(slide, location, level, size)
    except (openslide.OpenSlideError, OSError, ValueError) as err:
        raise SlideError(
            f"reading pixels of {path} failed (level {level}, at {location}, size {size}): {type(err).__name__}: {err}. "
            f"The slide file is damaged in that region (a corrupt tile or a truncated copy): copy or export it again, "
            f"{REMOVE_HINT}"
        ) from err


def read_level_resized(slide, path: str | Path, level: int, out_size: tuple[int, int]) -> np.ndarray:
    """Level ``level`` shrunk (area average) to ``out_size`` = (w, h), read in horizontal strips.

    Memory stays near :data:`STRIP_PIXELS` RGBA pixels plus the output, whatever the level's
    size, so a single-level gigapixel slide is handled the same way as a pyramid.
    """
    import cv2

    width, height = slide.level_dimensions[level]
    out_w, out_h = out_size
    downsample = float(slide.level_downsamples[level])
    same = (out_w, out_h) == (width, height)
    scale = height / out_h  # level rows per output row
    out_rows_per_strip = max(1, int(STRIP_PIXELS / max(1, width) / max(scale, 1.0)))
    out = np.empty((out_h, out_w, 3), np.uint8)
    for o0 in range(0, out_h, out_rows_per_strip):
        o1 = min(out_h, o0 + out_rows_per_strip)
        r0 = int(round(o0 * scale))
        r1 = height if o1 == out_h else int(round(o1 * scale))
        r1 = max(r1, r0 + 1)
        strip = read_region_rgb(slide, path, (0, int(round(r0 * downsample))), level, (width, r1 - r0))
        if same:
            out[o0:o1] = strip
        else:
            interp = cv2.INTER_AREA if scale >= 1 else cv2.INTER_LINEAR
            out[o0:o1] = cv2.resize(strip, (out_w, o1 - o0), interpolation=interp)
    return out


def read_patches(path: str | Path, coords: np.ndarray, patch_size_level0: int, out_px: int) -> list[np.ndarray]:
    """Patches at level-0 ``coords`` read from the level closest to ``out_px`` px, shrunk to it (pictures,
    not encoder input: that is :mod:`ghanet_pipeline.slides.patch_reader`)."""
    import cv2

    slide = open_slide(path)
    try:
        level = slide.get_best_level_for_downsample(max(1.0, patch_size_level0 / out_px))
        size = max(1, int(round(patch_size_level0 / float(slide.level_downsamples[level]))))
        return [
            cv2.resize(read_region_rgb(slide, path, (int(x), int(y)), level, (size, size)), (out_px, out_px),
                       interpolation=cv2.INTER_AREA)
            for x, y in np.asarray(coords).tolist()
        ]  # fmt: skip
    finally:
        slide.close()


def thumbnail_size(level0_size: tuple[int, int], max_side: int) -> tuple[tuple[int, int], float]:
    """((w, h) of a thumbnail of at most ``max_side`` px, never enlarged; level-0 px per thumbnail px asked)."""
    width, height = (max(1, int(v)) for v in level0_size)
    downsample = max(1.0, max(width, height) / max_side)
    return (max(1, int(round(width / downsample))), max(1, int(round(height / downsample)))), downsample


def thumbnail(slide, path: str | Path, max_side: int, stored: bool = False) -> tuple[np.ndarray, float]:
    """The slide shrunk to at most ``max_side`` px (RGB) and its level-0 px per thumbnail px.

    With ``stored``, the slide's own thumbnail (an associated image) is used when it has the
    slide's aspect and enough pixels, which spares reading a whole level of a single-level slide.
    Read errors are :class:`SlideError`.
    """
    width = int(slide.level_dimensions[0][0])
    size, downsample = thumbnail_size(slide.level_dimensions[0], max_side)
    image = _stored_thumbnail(slide, size) if stored else None
    if image is None:
        image = read_level_resized(slide, path, slide.get_best_level_for_downsample(downsample), size)
    return image, width / size[0]


def _stored_thumbnail(slide, size: tuple[int, int]) -> np.ndarray | None:
    import cv2

    try:
        image = slide.associated_images.get("thumbnail")
    except Exception:  # noqa: BLE001 - a broken associated image only means reading the pyramid
        return None
    if image is None:
        return None
    w, h = image.size
    w0, h0 = slide.dimensions
    if abs(w / h - w0 / h0) > 0.02 * (w0 / h0) or w < 0.9 * size[0]:
        return None
    rgb = np.asarray(image.convert("RGB"))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
