"""Quality-control outputs of the tissue stage: an overlay PNG and QuPath-ready GeoJSON.

- PNG: the slide thumbnail with tissue outlines (green), holes (blue), pen and debris
  (red, hatched by tint) and the kept patch grid (yellow squares; blurred patches magenta and
  crossed); for a failed slide a
  plain image that says ``failed: <reason>``.
- GeoJSON: a FeatureCollection of Polygon features (exterior ring, then holes) in level-0
  pixel coordinates, with ``objectType: annotation`` and classification ``Tissue`` so
  QuPath (File > Import objects) shows them as annotations.

Both are drawn from the tissue mask the patch grid measured (pen and debris cut out, holes
carved), so what QC shows is what was patched; :func:`rasterize` turns the GeoJSON back into
that mask.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from ghanet_pipeline.io import store

Polygon = tuple[np.ndarray, list[np.ndarray]]  # exterior (k, 2), holes, in mask px

GREEN, BLUE, RED, YELLOW, MAGENTA = (0, 170, 0), (30, 60, 230), (230, 30, 30), (240, 200, 0), (220, 0, 220)


def polygons_from_mask(mask: np.ndarray, min_points: int = 3) -> list[Polygon]:
    """Exterior rings with their holes (``cv2.RETR_CCOMP``) of a 0/1 mask, in mask px."""
    import cv2

    if mask.size == 0 or not mask.any():
        return []
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    polygons: list[Polygon] = []
    for index, contour in enumerate(contours):
        if hierarchy[index][3] != -1 or len(contour) < min_points:
            continue
        holes = []
        child = hierarchy[index][2]
        while child != -1:
            if len(contours[child]) >= min_points:
                holes.append(contours[child][:, 0, :])
            child = hierarchy[child][0]
        polygons.append((contour[:, 0, :], holes))
    return polygons


def _ring(points: np.ndarray, downsample: float, bounds: tuple[int, int] | None) -> list[list[float]]:
    # Contour points are mask-pixel indices; their centres in level-0 px, inside the slide.
    xy = (points.astype(np.float64) + 0.5) * downsample
    if bounds is not None:
        xy = np.clip(xy, 0, bounds)
    ring = [[round(float(x), 1), round(float(y), 1)] for x, y in xy]
    ring.append(ring[0])
    return ring


def geojson(
    polygons: Sequence[Polygon], downsample: float, slide_id: str, level0_size: tuple[int, int] | None = None
) -> dict:
    """QuPath-ready FeatureCollection; ``level0_size`` (w, h) clips the rings to the slide."""
    features = []
    for exterior, holes in polygons:
        rings = [_ring(exterior, downsample, level0_size)] + [_ring(h, downsample, level0_size) for h in holes]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": "Tissue", "color": list(GREEN)},
                    "name": slide_id,
                    "isLocked": False,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def rasterize(features: Sequence[dict], shape: tuple[int, int], downsample: float) -> np.ndarray:
    """The (h, w) 0/1 mask at ``downsample`` (level-0 px per mask px) that GeoJSON polygons from
    :func:`geojson` describe: the inverse of :func:`polygons_from_mask` (rings run through the
    centres of the outermost pixels; a hole's ring runs through the tissue pixels round it)."""
    import cv2

    out = np.zeros(shape, np.uint8)

    def pixels(ring) -> np.ndarray:
        xy = np.asarray(ring, np.float64) / downsample - 0.5
        return np.round(xy).astype(np.int32).reshape(-1, 1, 2)

    for feature in features:
        exterior, *holes = feature["geometry"]["coordinates"]
        cv2.fillPoly(out, [pixels(exterior)], 1)
        cv2.polylines(out, [pixels(exterior)], True, 1)
        for hole in holes:
            cv2.fillPoly(out, [pixels(hole)], 0)
            cv2.polylines(out, [pixels(hole)], True, 1)
    return out


def write_geojson(
    path: str | Path,
    polygons: Sequence[Polygon],
    downsample: float,
    slide_id: str,
    level0_size: tuple[int, int] | None = None,
) -> None:
    store.write_json(path, geojson(polygons, downsample, slide_id, level0_size))


def overlay(
    thumb: np.ndarray,
    polygons: Sequence[Polygon],
    mask_downsample: float,
    thumb_downsample: float,
    coords: np.ndarray,
    patch_level0: int,
    artifacts: np.ndarray | None,
    caption: str,
    flagged: np.ndarray | None = None,
) -> np.ndarray:
    """The QC image (RGB): ``thumb_downsample`` is level-0 px per thumbnail px; ``flagged``
    (bool per patch) marks blurred patches, drawn magenta and crossed."""
    import cv2

    image = np.ascontiguousarray(thumb.copy())
    h, w = image.shape[:2]
    scale = mask_downsample / thumb_downsample  # thumbnail px per mask px
    if artifacts is not None and artifacts.any():
        art = cv2.resize(artifacts.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        image[art] = (0.5 * image[art] + 0.5 * np.array(RED)).astype(np.uint8)
    thickness = max(1, int(round(max(h, w) / 600)))
    side = max(1, int(round(patch_level0 / thumb_downsample)))
    for i, (x, y) in enumerate(coords):
        x0, y0 = int(x / thumb_downsample), int(y / thumb_downsample)
        blurred = flagged is not None and bool(flagged[i])
        cv2.rectangle(image, (x0, y0), (x0 + side - 1, y0 + side - 1), MAGENTA if blurred else YELLOW, 1)
        if blurred:
            cv2.line(image, (x0, y0), (x0 + side - 1, y0 + side - 1), MAGENTA, 1)
    for exterior, holes in polygons:
        pts = ((exterior + 0.5) * scale).astype(np.int32)
        cv2.polylines(image, [pts], True, GREEN, thickness + 1, cv2.LINE_AA)
        for hole in holes:
            cv2.polylines(image, [((hole + 0.5) * scale).astype(np.int32)], True, BLUE, thickness + 1, cv2.LINE_AA)
    return _with_caption(image, [caption])


def _with_caption(image: np.ndarray, lines: list[str]) -> np.ndarray:
    import cv2

    width = max(image.shape[1], 480)
    font_scale = max(0.45, width / 1600)
    line_h = int(28 * font_scale) + 6
    band = np.full((line_h * len(lines) + 8, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (6, line_h * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    body = np.full((image.shape[0], width, 3), 255, np.uint8)
    body[:, : image.shape[1]] = image
    return np.concatenate([band, body], axis=0)


def failed_image(slide_id: str, reason: str, width: int = 900) -> np.ndarray:
    """A plain image that says why the slide failed, for the QC gallery."""
    lines = [f"{slide_id}", f"failed: {' '.join(reason.split()) or 'unknown reason'}"]
    wrapped = [piece for line in lines for piece in (textwrap.wrap(line, 90) or [""])]
    return _with_caption(np.full((40, width, 3), 255, np.uint8), wrapped)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode the QC image {path}")
    with store.atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
