"""Stain-aware pen and debris detection by optical density (colour deconvolution).

Light through an H&E section is absorbed by haematoxylin and eosin, whose optical densities
(OD = -log10(I / I_glass)) add. Both absorb green more than red and much more than blue, so a
stained pixel, however dark, has OD_red / OD_green and OD_blue / OD_green well below 1
(haematoxylin 0.93 and 0.41, eosin 0.07 and 0.11 in ``skimage.color``'s reference vectors;
the real slides' tissue medians are 0.27-0.53 and 0.57-0.62). Ink does not: blue and green
ink absorb red more than green, black ink, dust and pigment absorb all three alike (a flat
OD), brown debris absorbs blue most. Deciding by these OD ratios, not by darkness, keeps
dense lymphoid aggregates and tumour nests (dark, but H&E-coloured) out of the artefacts.

Artefacts grow by hysteresis: a clearly non-H&E seed (coloured ink, flat and dark, brown, or
nearly opaque) takes the connected pixels that are not clearly stained (ink over tissue mixes
with the stain); clearly stained pixels are never taken, only a 16 um fringe round each
artefact (where ink and stain blur together at seg resolution). Pieces are sized with
``skimage.measure.label`` in um^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Chromaticity of the OD vector: ratios to the green OD.
# Clearly H&E, never an artefact: red ratio at most this (haematoxylin's is 0.93, bluish
# lymphocyte nuclei reach 0.86) and blue ratio at most STAINED_MAX_BLUE_RATIO.
STAINED_MAX_RED_RATIO = 0.90
STAINED_MAX_BLUE_RATIO = 0.75
NEUTRAL_MIN_RED_RATIO = 0.88  # flat OD (grey to black): red ...
NEUTRAL_MIN_BLUE_RATIO = 0.85  # ... and blue absorbed nearly as much as green
INK_MIN_RED_RATIO = 1.30  # blue, green, cyan ink: red absorbed well beyond green
DEBRIS_MIN_BLUE_RATIO = 1.10  # brown/yellow debris: blue absorbed beyond green
# Seeds must be clearly inked (mean OD over the channels); weaker non-H&E pixels join a seed's piece.
SEED_MIN_OD = 0.25  # mean OD (about 56 % transmission)
WEAK_MIN_OD = 0.08
NEUTRAL_SEED_MIN_OD = 0.35  # flat (grey-black) pixels must be darker to seed: glass dirt is faintly grey
PEN_MIN_AREA_UM2 = 4_000.0  # coloured specks smaller than this are stain noise, not pen
DEBRIS_MIN_AREA_UM2 = 300.0  # a grey-black piece smaller than this is JPEG noise
DEBRIS_MAX_AREA_UM2 = 250_000.0  # grey-black pieces up to this are debris; larger ones black pen
# Ink over tissue mixes with the stain at its fringes (and JPEG chroma of a small black blob
# bleeds from its stained surroundings): artefacts are widened by this much whatever the colour.
ARTIFACT_MARGIN_UM = 16.0
# Darker than this (mean OD; 11 % transmission) is no H&E section at seg resolution (dense
# aggregates reach about 0.6): black ink over tissue, where a crushed green channel fakes an
# H&E colour, or a fold. Such pixels are never "stained" and seed grey-black artefacts.
OPAQUE_OD = 0.95


@dataclass(frozen=True)
class StainMaps:
    od: np.ndarray  # (h, w) float32 mean optical density over R, G, B
    red_ratio: np.ndarray  # (h, w) float32 OD_red / OD_green
    blue_ratio: np.ndarray  # (h, w) float32 OD_blue / OD_green
    stained: np.ndarray  # (h, w) bool: H&E-coloured with some density (never an artefact)


def glass_rgb(rgb: np.ndarray) -> np.ndarray:
    """The glass (incident light) colour: the median colour of the brightest tenth of the
    pixels, each channel at least 200 (a slide covered by tissue then keeps a near-white glass)."""
    flat = rgb.reshape(-1, 3)
    if flat.shape[0] > 400_000:  # a subsample is as good and bounds the sort
        flat = flat[:: flat.shape[0] // 200_000]
    if flat.size == 0:
        return np.full(3, 255.0, np.float32)
    brightness = flat.astype(np.int32).sum(axis=1)
    bright = flat[brightness >= np.percentile(brightness, 90)]
    return np.clip(np.median(bright, axis=0), 200, 255).astype(np.float32)


def _od_tables(glass: np.ndarray) -> np.ndarray:
    """(3, 256) float32 look-up tables: OD of each 8-bit value per channel (cheap on big thumbnails)."""
    values = np.maximum(np.arange(256, dtype=np.float32), 1.0)
    return np.stack([np.maximum(-np.log10(values / glass[c]), 0.0) for c in range(3)]).astype(np.float32)


def optical_density(rgb: np.ndarray, glass: np.ndarray | None = None) -> np.ndarray:
    """(h, w, 3) float32 OD relative to ``glass`` (clipped at 0: brighter than glass is glass)."""
    lut = _od_tables(glass_rgb(rgb) if glass is None else np.asarray(glass, np.float32))
    return np.stack([lut[c][rgb[..., c]] for c in range(3)], axis=-1)


def stain_maps(rgb: np.ndarray) -> StainMaps:
    lut = _od_tables(glass_rgb(rgb))
    red, green, blue = (lut[c][rgb[..., c]] for c in range(3))  # one contiguous plane each
    mean = red + green + blue
    mean *= np.float32(1 / 3)
    green = np.maximum(green, np.float32(1e-3), out=green)
    red_ratio = np.divide(red, green, out=red)
    blue_ratio = np.divide(blue, green, out=blue)
    stained = (red_ratio <= STAINED_MAX_RED_RATIO) & (blue_ratio <= STAINED_MAX_BLUE_RATIO)
    stained &= (mean >= WEAK_MIN_OD) & (mean < OPAQUE_OD)
    return StainMaps(mean, red_ratio, blue_ratio, stained)


def haematoxylin_eosin(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 2) haematoxylin and eosin densities by ``skimage.color.rgb2hed`` (for reports and tests)."""
    from skimage.color import rgb2hed

    return rgb2hed(rgb)[..., :2].astype(np.float32)


def label_areas(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(labels, area of each label) of the connected pieces of ``mask``; label 0 is the background.

    OpenCV's labelling: the same pieces as ``skimage.measure.label`` (8-connectivity) or
    ``scipy.ndimage.label`` (4), numbered differently, several times faster on a slide thumbnail.
    """
    import cv2

    # (connectedComponentsWithStats measured slower than labels + bincount here)
    _, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)
    return labels, np.bincount(labels.ravel())


def _hysteresis(weak: np.ndarray, strong: np.ndarray, min_px: float) -> np.ndarray:
    """Connected pieces of ``weak | strong`` that hold a ``strong`` pixel and at least ``min_px`` pixels."""
    if not strong.any():
        return np.zeros(strong.shape, bool)
    labels, areas = label_areas(weak | strong)
    keep = np.zeros(len(areas), bool)
    keep[labels[strong]] = True
    keep &= areas >= min_px
    keep[0] = False
    return np.take(keep, labels)  # (np.take: twice as fast as keep[labels] here)


def _widen(mask: np.ndarray, radius: int) -> np.ndarray:
    import cv2  # a disc dilation; OpenCV's is several times faster than skimage's here

    if radius <= 0 or not mask.any():
        return mask
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.view(np.uint8), disc).view(bool)


def artifact_masks(
    rgb: np.ndarray, seg_mpp: float, remove_pen: bool, remove_debris: bool, maps: StainMaps | None = None
) -> tuple[np.ndarray, np.ndarray, StainMaps]:
    """(pen, debris, maps) at seg resolution: pen = coloured ink and large grey-black areas
    (black ink), debris = smaller grey-black or brown pieces. Stained pixels are never in either."""
    maps = stain_maps(rgb) if maps is None else maps
    px_um2 = seg_mpp * seg_mpp
    empty = np.zeros(rgb.shape[:2], bool)
    weak = ~maps.stained & (maps.od >= WEAK_MIN_OD)
    ink = (maps.red_ratio >= INK_MIN_RED_RATIO) & (maps.od >= SEED_MIN_OD)
    brown = (maps.blue_ratio >= DEBRIS_MIN_BLUE_RATIO) & ~ink & (maps.od >= SEED_MIN_OD)
    flat = (maps.red_ratio >= NEUTRAL_MIN_RED_RATIO) & (maps.blue_ratio >= NEUTRAL_MIN_BLUE_RATIO) & ~ink
    pen, debris = empty, empty
    if remove_pen:
        pen = _hysteresis(weak, ink, PEN_MIN_AREA_UM2 / px_um2)
    dark = (flat & (maps.od >= NEUTRAL_SEED_MIN_OD)) | brown | (maps.od >= OPAQUE_OD)
    if dark.any():
        grey = _hysteresis(weak & ~pen, dark, DEBRIS_MIN_AREA_UM2 / px_um2)
        labels, areas = label_areas(grey)
        large = areas > DEBRIS_MAX_AREA_UM2 / px_um2
        large[0] = False
        if remove_pen:
            pen = pen | np.take(large, labels)
        if remove_debris:
            small = ~large
            small[0] = False
            debris = np.take(small, labels)
    margin = int(round(ARTIFACT_MARGIN_UM / seg_mpp))
    return _widen(pen, margin), _widen(debris, margin), maps
