"""Tissue segmentation of one slide at ``seg_mpp`` (default 8 um/px), sizes in micrometres.

The image is read from the coarsest pyramid level that is fine enough (level 0 shrunk in
strips when the slide has one level): HSV saturation with Otsu's threshold (or a fixed one),
pen and debris taken out by their optical density (ink and dust absorb colours in ratios H&E
never makes, see :mod:`ghanet_pipeline.slides.stain`; dark stained tissue is never an
artefact), a median blur and a closing sized in micrometres, contours with holes
(``cv2.RETR_CCOMP``) filtered by areas in um^2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ghanet_pipeline.config import TissueSettings
from ghanet_pipeline.slides import stain
from ghanet_pipeline.slides.regions import read_level_resized
from ghanet_pipeline.slides.slide import pick_level

PALE_MIN_OD = 0.04  # mean optical density; glass stays below 0.025 at seg resolution
PALE_INSET = 2  # seg px (16 um at 8 um/px) inside a piece's outline where pale tissue counts
SPECK_PX = 2  # mask pieces and holes of at most this many seg pixels are dropped/filled
OTSU_FLOOR = 20  # saturation below this is never tissue (an all-white slide stays empty)
# Outlines take pale (loose, oedematous) tissue too: saturation this far above the glass's median.
BACKGROUND_MARGIN = 15


@dataclass
class Segmentation:
    tissue: np.ndarray  # (h, w) uint8 0/1 tissue pixels (pen/debris excluded) at seg resolution
    regions: np.ndarray  # (h, w) uint8 0/1 kept tissue pieces with holes (closed, smooth outlines)
    artifacts: np.ndarray  # (h, w) bool: pen | debris (widened)
    rgb: np.ndarray  # (h, w, 3) the image segmented
    downsample: float  # level-0 px per mask px
    read_level: int
    threshold: tuple[int, int]  # saturation thresholds (outline, coverage)
    pen_pixels: int
    debris_pixels: int
    polygons: list = field(default_factory=list)


def _odd(n: float) -> int:
    k = max(1, int(round(n)))
    return k if k % 2 else k + 1


def _px_area(um2: float, seg_mpp: float) -> float:
    return um2 / (seg_mpp * seg_mpp)


def otsu_from_histogram(hist: np.ndarray) -> int:
    """Otsu's threshold of a 256-bin histogram (values <= it are the lower class)."""
    hist = hist.astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mean0 = np.divide(m0, w0, out=np.zeros(256), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros(256), where=w1 > 0)
    return int(np.argmax(w0 * w1 * (mean0 - mean1) ** 2))


def _histogram_median(hist: np.ndarray, lo: int, hi: int) -> float | None:
    """Median of the values in bins lo..hi (inclusive) of a histogram; None when empty."""
    part = hist[lo : hi + 1]
    total = part.sum()
    if total <= 0:
        return None
    return float(lo + np.searchsorted(np.cumsum(part), total / 2))


def saturation_thresholds(saturation: np.ndarray, mask: np.ndarray | None = None) -> tuple[int, int]:
    """(outline, coverage) thresholds on saturation (where ``mask``), from Otsu's split of glass and tissue.

    ``coverage`` is the midpoint between the medians of the two classes: a low-resolution
    pixel half covered by tissue sits there, so counting pixels above it estimates the
    tissue fraction without bias. ``outline`` is lower (the glass median + BACKGROUND_MARGIN,
    when that is lower) so pale, loose tissue still belongs to a tissue piece. Both are at
    least OTSU_FLOOR, so a slide of bare glass stays empty.
    """
    import cv2

    if saturation.size == 0:
        return OTSU_FLOOR, OTSU_FLOOR
    hist = cv2.calcHist([saturation], [0], mask, [256], [0, 256]).reshape(-1)
    if hist.sum() <= 0:
        return OTSU_FLOOR, OTSU_FLOOR
    split = otsu_from_histogram(hist)
    glass_median = _histogram_median(hist, 0, split)
    stained_median = _histogram_median(hist, split + 1, 255)
    glass_median = 0.0 if glass_median is None else glass_median
    stained_median = 255.0 if stained_median is None else stained_median
    coverage = max(OTSU_FLOOR, int(round((glass_median + stained_median) / 2)))
    outline = max(OTSU_FLOOR, min(coverage, int(round(glass_median)) + BACKGROUND_MARGIN))
    return outline, coverage


def binary_median(mask: np.ndarray, k: int) -> np.ndarray:
    """Median filter of a 0/1 mask with a k x k window: the window's majority (a box sum, fast)."""
    import cv2

    if k <= 1:
        return mask
    sums = cv2.boxFilter(mask, cv2.CV_16U, (k, k), normalize=False, borderType=cv2.BORDER_REPLICATE)
    return (sums > (k * k) // 2).view(np.uint8)


def filter_contours(mask: np.ndarray, min_tissue_px: float, min_hole_px: float) -> np.ndarray:
    """Redraw ``mask`` keeping tissue pieces of net area >= ``min_tissue_px`` and holes
    of area >= ``min_hole_px`` (smaller holes are filled)."""
    import cv2

    out = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return out
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    hierarchy = hierarchy[0]
    for index, contour in enumerate(contours):
        if hierarchy[index][3] != -1:
            continue
        holes, child = [], hierarchy[index][2]
        while child != -1:
            holes.append(contours[child])
            child = hierarchy[child][0]
        hole_areas = [cv2.contourArea(hc) for hc in holes]
        kept = [hc for hc, a in zip(holes, hole_areas) if a >= min_hole_px]
        net = cv2.contourArea(contour) - sum(a for a in hole_areas if a >= min_hole_px)
        if net < min_tissue_px:
            continue
        cv2.drawContours(out, [contour], -1, 1, thickness=cv2.FILLED)
        if kept:
            cv2.drawContours(out, kept, -1, 0, thickness=cv2.FILLED)
            cv2.drawContours(out, kept, -1, 1, thickness=1)  # the hole's rim is tissue
    return out


def segment_rgb(
    rgb: np.ndarray, seg_mpp: float, settings: TissueSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], int, int]:
    """Segment an RGB image at ``seg_mpp``: (tissue, regions, artifacts, thresholds, pen px, debris px).

    ``regions`` (0/1) are the kept tissue pieces with their holes, closed and filtered by
    area. ``tissue`` (0/1) is the foreground above the coverage threshold inside those
    regions (and pale stained tissue away from their borders), unsmoothed: what the patch grid
    measures and what QC and GeoJSON draw, so a gap that the closing bridged or a hole below
    the area filter still counts as no tissue. Both exclude pen and debris.
    ``thresholds`` are the (outline, coverage) saturation thresholds used.
    """
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    pen, debris, maps = stain.artifact_masks(rgb, seg_mpp, settings.remove_pen, settings.remove_debris)
    artifacts = pen | debris
    clean = (~artifacts).view(np.uint8)
    saturation = np.ascontiguousarray(hsv[..., 1])
    if settings.saturation_threshold is None:
        outline_at, coverage_at = saturation_thresholds(saturation, clean)
    else:
        outline_at = coverage_at = int(settings.saturation_threshold)
    k = _odd(settings.median_blur_um / seg_mpp)

    def foreground(threshold: int, blur: bool) -> np.ndarray:
        mask = cv2.threshold(saturation, threshold, 1, cv2.THRESH_BINARY)[1] & clean
        return binary_median(mask, k) if blur else mask

    closed = foreground(outline_at, blur=True)
    c = int(round(settings.close_um / seg_mpp))
    if c > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (c, c))
        closed = cv2.morphologyEx(closed, cv2.MORPH_CLOSE, kernel)
    closed[artifacts] = 0  # closing must not bridge a pen stroke
    regions = filter_contours(
        closed, _px_area(settings.min_tissue_area_um2, seg_mpp), _px_area(settings.min_hole_area_um2, seg_mpp)
    )
    regions[artifacts] = 0
    tissue = regions & foreground(coverage_at, blur=False)
    # pale (loose, oedematous, fatty) tissue: above the outline threshold, absorbing clearly
    # more than glass, and away from a piece's border, where pixels half tissue and half glass
    # would pass the lower bar too
    inner = cv2.erode(regions, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * PALE_INSET + 1,) * 2))
    tissue |= inner & foreground(outline_at, blur=False) & (maps.od >= PALE_MIN_OD).view(np.uint8)
    # specks of a pixel or two (JPEG noise, a nucleus on glass inside a hole) would only
    # clutter the outlines drawn from this mask; they change no patch's fraction measurably
    tissue = _drop_specks(tissue, SPECK_PX)
    return tissue, regions, artifacts, (outline_at, coverage_at), int(pen.sum()), int(debris.sum())


def _drop_specks(mask: np.ndarray, max_px: int) -> np.ndarray:
    """``mask`` (0/1 uint8) without pieces or holes of at most ``max_px`` pixels (4-connected, as
    ``skimage.morphology.remove_small_objects`` / ``remove_small_holes`` count them)."""
    if max_px <= 0 or not mask.any():
        return mask
    keep = mask.astype(bool)
    for value in (False, True):  # pieces of the mask, then holes (pieces of its complement)
        labels, areas = stain.label_areas(keep if not value else ~keep, connectivity=4)
        small = areas <= max_px
        small[0] = False
        if small.any():
            keep[np.take(small, labels)] = value
    return keep.view(np.uint8)


def segmentation_plan(slide, mpp: float, seg_mpp: float, tolerance: float) -> tuple[int, tuple[int, int], float]:
    """(level to read, mask size (w, h), level-0 px per mask px) for segmenting at ``seg_mpp``."""
    width, height = slide.level_dimensions[0]
    downsample = seg_mpp / mpp
    out = (max(1, int(round(width / downsample))), max(1, int(round(height / downsample))))
    level = pick_level(slide.level_downsamples, mpp, seg_mpp, tolerance)
    level_w, level_h = slide.level_dimensions[level]
    if abs(level_w - out[0]) <= 1 and abs(level_h - out[1]) <= 1:
        out = (level_w, level_h)  # this level is the segmentation resolution: no resize
    return level, out, width / out[0]


def segment_slide(slide, path: str, mpp: float, settings: TissueSettings) -> Segmentation:
    level, size, downsample = segmentation_plan(slide, mpp, settings.seg_mpp, settings.mpp_tolerance)
    rgb = read_level_resized(slide, path, level, size)
    seg_mpp = downsample * mpp
    tissue, regions, artifacts, threshold, pen_px, debris_px = segment_rgb(rgb, seg_mpp, settings)
    return Segmentation(tissue, regions, artifacts, rgb, downsample, level, threshold, pen_px, debris_px)


def segmentation_params(settings: TissueSettings) -> dict:
    params = {k: v for k, v in asdict(settings).items() if k not in ("target_mpp", "patch_size", "overlap", "min_tissue_fraction")}
    params.update(
        stained_max_red_ratio=stain.STAINED_MAX_RED_RATIO, stained_max_blue_ratio=stain.STAINED_MAX_BLUE_RATIO, neutral_min_red_ratio=stain.NEUTRAL_MIN_RED_RATIO,
        neutral_min_blue_ratio=stain.NEUTRAL_MIN_BLUE_RATIO, ink_min_red_ratio=stain.INK_MIN_RED_RATIO,
        debris_min_blue_ratio=stain.DEBRIS_MIN_BLUE_RATIO, seed_min_od=stain.SEED_MIN_OD,
        weak_min_od=stain.WEAK_MIN_OD, neutral_seed_min_od=stain.NEUTRAL_SEED_MIN_OD,
        pen_min_area_um2=stain.PEN_MIN_AREA_UM2, debris_min_area_um2=stain.DEBRIS_MIN_AREA_UM2,
        debris_max_area_um2=stain.DEBRIS_MAX_AREA_UM2, artifact_margin_um=stain.ARTIFACT_MARGIN_UM,
        opaque_od=stain.OPAQUE_OD,
        speck_px=SPECK_PX, pale_inset_px=PALE_INSET, pale_min_od=PALE_MIN_OD, otsu_floor=OTSU_FLOOR, background_margin=BACKGROUND_MARGIN,
    )  # fmt: skip
    return params
