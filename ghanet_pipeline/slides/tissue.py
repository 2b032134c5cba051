"""Segment the tissue of one slide and lay its patch grid, by microns per pixel.

Writes ``OUT/tiles/{id}.zarr`` (coords + tissue mask + attributes), ``OUT/qc/{id}.png``,
``OUT/qc/{id}.geojson`` and ``OUT/status/{id}.json`` - also for a slide that cannot be read
(status ``failed`` with the reason), unless ``--strict``, which exits non-zero instead.

Segmentation runs at ``seg_mpp`` (default 8 um/px) read from the coarsest pyramid level that
is fine enough (level 0 shrunk in strips when the slide has one level): HSV saturation with
Otsu's threshold (or a fixed one), pen and debris taken out by their optical density (ink and
dust absorb colours in ratios H&E never makes, see :mod:`ghanet_pipeline.slides.stain`; dark stained
tissue is never an artefact), a median blur and a closing sized in micrometres, contours with
holes (``cv2.RETR_CCOMP``) filtered by areas in um^2. The patch grid may run past the right and
bottom edges (outside reads as white glass). The QC outlines and GeoJSON are drawn from the
mask the grid measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ghanet_pipeline.config import TissueSettings
from ghanet_pipeline.io import store
from ghanet_pipeline.io.layout import Layout, check_slide_id
from ghanet_pipeline.slides import patch_quality, qc, stain, tiling
from ghanet_pipeline.slides.slide import (
    LevelChoice,
    Mpp,
    SlideError,
    absolute_path,
    choose_level,
    open_slide,
    pick_level,
    read_level_resized,
    resolve_mpp,
    source_size,
)  # fmt: skip

log = logging.getLogger("ghanet.tissue")

PALE_MIN_OD = 0.04  # mean optical density; glass stays below 0.025 at seg resolution
PALE_INSET = 2  # seg px (16 um at 8 um/px) inside a piece's outline where pale tissue counts
SPECK_PX = 2  # mask pieces and holes of at most this many seg pixels are dropped/filled
OTSU_FLOOR = 20  # saturation below this is never tissue (an all-white slide stays empty)
# Outlines take pale (loose, oedematous) tissue too: saturation this far above the glass's median.
BACKGROUND_MARGIN = 15
QC_MAX_SIDE = 1600


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


@dataclass
class SlideResult:
    slide_id: str
    path: str
    status: str = "failed"
    reason: str = ""
    mpp: Mpp | None = None
    level: LevelChoice | None = None
    level0_size: tuple[int, int] = (0, 0)
    segmentation: Segmentation | None = None
    grid: tiling.Grid | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    qc_thumb: np.ndarray | None = None
    qc_downsample: float = 1.0
    blur: np.ndarray | None = None  # (N,) float32 blur score per kept patch (None: not computed)
    quality_level: int | None = None
    n_dropped_blur: int = 0

    @property
    def n_patches(self) -> int:
        return 0 if self.grid is None else len(self.grid.coords)


# ----------------------------------------------------------------------------- segmentation


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
    """``mask`` (0/1 uint8) without pieces or holes of at most ``max_px`` pixels (skimage.morphology)."""
    from skimage.morphology import remove_small_holes, remove_small_objects

    if max_px <= 0 or not mask.any():
        return mask
    keep = remove_small_objects(mask.astype(bool), max_size=max_px)
    keep = remove_small_holes(keep, max_size=max_px)
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


# ----------------------------------------------------------------------------- one slide


def process(
    slide_id: str, path: str | Path, settings: TissueSettings, sheet_mpp: float | None = None, qc_image: bool = True
) -> SlideResult:
    """Everything but writing: a failed result carries the reason instead of raising."""
    result = SlideResult(slide_id=slide_id, path=str(path))
    t0 = time.perf_counter()
    try:
        slide = open_slide(path)
        try:
            result.level0_size = tuple(int(v) for v in slide.level_dimensions[0])
            result.mpp = resolve_mpp(slide.properties, path, sheet_mpp, settings.default_slide_mpp)
            if result.mpp.source in ("objective_power", "config_default"):
                result.warnings.append(f"mpp {result.mpp.value:.4g} from {result.mpp.source} (approximate)")
            result.level = choose_level(
                slide.level_downsamples, result.mpp.value, settings.target_mpp, settings.patch_size, settings.mpp_tolerance
            )
            if result.level.upsampled:
                result.warnings.append(
                    f"slide resolution {result.level.level_mpp:.4g} um/px is coarser than target_mpp "
                    f"{settings.target_mpp:g}: patches are upsampled from level 0"
                )
            t1 = time.perf_counter()
            result.timings["open"] = t1 - t0
            seg = segment_slide(slide, str(path), result.mpp.value, settings)
            t2 = time.perf_counter()
            result.timings["segment"] = t2 - t1
            step = tiling.step_for(result.level.patch_size_level0, settings.overlap)
            tiling.check_grid_size(seg.tissue, seg.downsample, result.level0_size, step, settings.max_patches_per_slide)
            result.grid = tiling.patch_grid(
                seg.tissue, seg.artifacts, seg.downsample, result.level0_size,
                result.level.patch_size_level0, step, settings.min_tissue_fraction,
                past_edge=settings.edge_patches, max_artifact_fraction=settings.max_artifact_fraction,
                fill_min_new=settings.fill_min_new_tissue, fill_max_overlap=settings.fill_max_overlap,
            )  # fmt: skip
            tiling.check_patch_count(result.grid, settings.max_patches_per_slide)
            t3 = time.perf_counter()
            result.timings["patch"] = t3 - t2
            if settings.quality_mpp is not None and len(result.grid.coords):
                _score_blur(result, str(path), settings)
                t3 = time.perf_counter()
                result.timings["quality"] = t3 - t2 - result.timings["patch"]
            seg.polygons = qc.polygons_from_mask(seg.tissue)  # the QC shows the mask the grid used
            result.segmentation = seg
            if qc_image:
                try:
                    result.qc_thumb, result.qc_downsample = _qc_thumbnail(slide, str(path), seg)
                except SlideError as err:  # the QC picture is not worth failing the slide for
                    result.warnings.append(
                        f"QC thumbnail not readable, the segmentation image is used instead; the features stage "
                        f"will fail or skip patches in the damaged region: {err}"
                    )
                result.timings["qc_read"] = time.perf_counter() - t3
        finally:
            with contextlib.suppress(Exception):
                slide.close()
    except SlideError as err:
        return _failed(result, str(err))
    except tiling.TooManyPatches as err:
        return _failed(result, too_many_patches_reason(err, result, settings))
    except Exception as err:  # noqa: BLE001 - one odd slide must not stop the cohort
        log.debug("slide %s: unexpected error", slide_id, exc_info=True)
        return _failed(
            result,
            f"unexpected error while processing {path}: {type(err).__name__}: {err}. "
            "Check the slide (open it in QuPath or openslide-show-properties); if it looks fine, rerun with "
            "'ghanet tissue -v' and report the traceback",
        )
    result.status = "ok"
    if result.n_patches == 0:
        message = "no tissue found: 0 patches" if not seg.tissue.any() else "tissue found but no patch reaches min_tissue_fraction"
        result.warnings.append(message)
    for warning in result.warnings:
        log.warning("slide %s: %s", slide_id, warning)
    return result


def too_many_patches_reason(err: tiling.TooManyPatches, result: SlideResult, settings: TissueSettings) -> str:
    """The count, the settings that made it and the fix."""
    level, mpp = result.level, result.mpp
    return (
        f"{result.path}: {err}. Settings: tissue.target_mpp {settings.target_mpp:g} um/px, patch_size "
        f"{settings.patch_size}, overlap {settings.overlap:g}, on a slide of {result.level0_size[0]} x "
        f"{result.level0_size[1]} px at {mpp.value:.4g} um/px (from {mpp.source}): a patch is "
        f"{level.patch_size_level0} level-0 px, one every "
        f"{tiling.step_for(level.patch_size_level0, settings.overlap)} px. Check target_mpp (0.5 = 20x, 0.25 = 40x), "
        "overlap and the slide's mpp (the sample sheet's 'mpp' column wins); if this many patches are "
        "intended, raise tissue.max_patches_per_slide"
    )


def quality_threads() -> int:
    """Threads for the block-wise blur score: the cores this process may use, at most 4."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def _score_blur(result: SlideResult, path: str, settings: TissueSettings) -> None:
    """Blur score of every kept patch; with ``tissue.max_blur`` set, drop the blurred ones."""
    grid = result.grid
    try:
        # its own handle: after a read error OpenSlide refuses every later call on the handle
        own = open_slide(path)
        try:
            blur, plan = patch_quality.blur_scores(
                own, path, result.mpp.value, grid.coords, result.level.patch_size_level0, settings.quality_mpp,
                settings.mpp_tolerance, threads=quality_threads(),
            )  # fmt: skip
        finally:
            with contextlib.suppress(Exception):
                own.close()
    except SlideError as err:  # a report is not worth failing the slide for; features will name the region
        result.warnings.append(
            f"blur scores not computed (pixels at {settings.quality_mpp:g} um/px not readable); the features stage "
            f"will fail or skip patches in the damaged region: {err}"
        )
        return
    result.quality_level = plan.level
    if settings.max_blur is not None:
        keep = blur <= settings.max_blur + 1e-9
        result.n_dropped_blur = int((~keep).sum())
        if result.n_dropped_blur:
            art = grid.artifact_fractions
            result.grid = dataclasses.replace(
                grid, coords=grid.coords[keep], fractions=grid.fractions[keep],
                artifact_fractions=None if art is None else art[keep],
            )  # fmt: skip
            blur = blur[keep]
    result.blur = blur


def blur_threshold(settings: TissueSettings) -> float:
    """Above this blur score a patch is flagged (and dropped when tissue.max_blur is set)."""
    return settings.max_blur if settings.max_blur is not None else patch_quality.REPORT_BLUR


def _failed(result: SlideResult, reason: str) -> SlideResult:
    result.status, result.reason = "failed", reason
    result.grid = None
    result.segmentation = None
    log.error("slide %s failed: %s", result.slide_id, reason)
    return result


def _qc_thumbnail(slide, path: str, seg: Segmentation) -> tuple[np.ndarray, float]:
    """A thumbnail of at most QC_MAX_SIDE px (the segmentation image when that is big enough)."""
    width, height = slide.level_dimensions[0]
    if max(seg.rgb.shape[:2]) >= QC_MAX_SIDE // 2:
        return seg.rgb, seg.downsample
    downsample = max(1.0, max(width, height) / QC_MAX_SIDE)
    size = (max(1, int(round(width / downsample))), max(1, int(round(height / downsample))))
    level = slide.get_best_level_for_downsample(downsample)
    return read_level_resized(slide, path, level, size), width / size[0]


# ----------------------------------------------------------------------------- outputs


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


def store_attrs(result: SlideResult, settings: TissueSettings) -> dict:
    level, seg, mpp = result.level, result.segmentation, result.mpp
    grid = result.grid
    return {
        "ghanet_store": "tiles",
        "status": result.status,
        "reason": result.reason,
        "warnings": result.warnings,
        "slide_id": result.slide_id,
        "source_path": absolute_path(result.path) if result.path else "",  # a symlink loop must not crash here
        "source_size_bytes": source_size(result.path),
        "level0_size": list(result.level0_size),
        "mpp": mpp.value if mpp else None,
        "mpp_source": mpp.source if mpp else None,
        "target_mpp": settings.target_mpp,
        "effective_mpp": level.effective_mpp if level else None,
        "read_level": level.level if level else None,
        "read_downsample": level.downsample if level else None,
        "read_level_mpp": level.level_mpp if level else None,
        "upsampled": level.upsampled if level else None,
        "patch_size": settings.patch_size,
        "patch_size_read": level.patch_size_read if level else None,
        "patch_size_level0": level.patch_size_level0 if level else None,
        "step_level0": tiling.step_for(level.patch_size_level0, settings.overlap) if level else None,
        "overlap": settings.overlap,
        "min_tissue_fraction": settings.min_tissue_fraction,
        "mask_downsample": seg.downsample if seg else None,
        "segmentation_level": seg.read_level if seg else None,
        "saturation_thresholds_used": list(seg.threshold) if seg else None,
        "pen_pixels": seg.pen_pixels if seg else 0,
        "debris_pixels": seg.debris_pixels if seg else 0,
        "n_candidates": grid.n_candidates if grid else 0,
        "n_dropped_on_artifact": grid.n_dropped_artifact if grid else 0,
        # patches may run past the right/bottom edge; the part outside is read as white glass
        "n_past_edge": grid.n_past_edge if grid else 0,
        "quality_mpp": settings.quality_mpp,
        "quality_level": result.quality_level,
        "blur_threshold": blur_threshold(settings),
        "blur_dropped": settings.max_blur is not None,
        "n_blurred": n_blurred(result, settings),
        "n_dropped_blur": result.n_dropped_blur,
        "n_fill_patches": grid.n_fill if grid else 0,
        "outside_slide_reads_as": "white",
        "segmentation": segmentation_params(settings),
    }


def n_blurred(result: SlideResult, settings: TissueSettings) -> int:
    """Patches whose blur score is above the flag threshold (kept unless tissue.max_blur drops them)."""
    return int((result.blur > blur_threshold(settings)).sum()) if result.blur is not None else 0


def status_record(result: SlideResult, settings: TissueSettings, seconds: float) -> dict:
    return {
        "slide_id": result.slide_id,
        "status": result.status,
        "reason": result.reason,
        "path": result.path,
        "n_patches": result.n_patches,
        "n_blurred": n_blurred(result, settings),
        "mpp": result.mpp.value if result.mpp else None,
        "mpp_source": result.mpp.source if result.mpp else None,
        "effective_mpp": result.level.effective_mpp if result.level else None,
        "seconds": round(seconds, 3),
        "warnings": result.warnings,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
    }


def write_outputs(result: SlideResult, settings: TissueSettings, layout: Layout, seconds: float) -> None:
    """The four outputs; the status record goes last (it marks the slide as done)."""
    seg = result.segmentation if result.status == "ok" else None
    coords = result.grid.coords if (result.grid is not None and result.status == "ok") else np.zeros((0, 2), np.int64)
    with store.atomic_path(layout.tiles(result.slide_id)) as tmp:
        group = store.create_group(tmp, store_attrs(result, settings))
        store.write_array(group, "coords", coords.astype(np.int64))
        mask = seg.tissue if seg is not None else np.zeros((0, 0), np.uint8)
        store.write_array(group, "tissue_mask", mask.astype(np.uint8), chunk_rows=1024)
        # per-patch quality, row i = coords row i: tissue and pen/debris shares, blur score
        grid = result.grid if seg is not None else None
        n = len(coords)
        store.write_array(group, "tissue_fraction", grid.fractions.astype(np.float32) if grid else np.zeros(0, np.float32))
        art = grid.artifact_fractions if grid is not None and grid.artifact_fractions is not None else np.zeros(n, np.float32)
        store.write_array(group, "artifact_fraction", art.astype(np.float32))
        if result.blur is not None and seg is not None:
            store.write_array(group, "blur", result.blur.astype(np.float32))
    if seg is not None:
        level = result.level
        caption = (
            f"{result.slide_id}: {len(coords)} patches of {settings.patch_size} px at {level.effective_mpp:.3f} um/px "
            f"(mpp {result.mpp.value:.4g} from {result.mpp.source})"
        )
        image = qc.overlay(
            result.qc_thumb if result.qc_thumb is not None else seg.rgb, seg.polygons, seg.downsample,
            result.qc_downsample if result.qc_thumb is not None else seg.downsample,
            coords, level.patch_size_level0, seg.artifacts, caption,
            flagged=None if result.blur is None else result.blur > blur_threshold(settings),
        )  # fmt: skip
        qc.write_png(layout.qc_png(result.slide_id), image)
        qc.write_geojson(
            layout.qc_geojson(result.slide_id), seg.polygons, seg.downsample, result.slide_id, result.level0_size
        )
    else:
        qc.write_png(layout.qc_png(result.slide_id), qc.failed_image(result.slide_id, result.reason))
        qc.write_geojson(layout.qc_geojson(result.slide_id), [], 1.0, result.slide_id)
    store.write_json(layout.status(result.slide_id), status_record(result, settings, seconds))


class StrictFailure(RuntimeError):
    """A slide failed and strict mode is on."""


def run(
    slide_id: str,
    slide_path: str | Path,
    out_dir: str | Path,
    settings: TissueSettings,
    sheet_mpp: float | None = None,
    strict: bool = False,
) -> SlideResult:
    """Process one slide and write its outputs. Raises UnsafeIdError before writing anything
    for an unsafe id, and StrictFailure (nothing written) for a failed slide in strict mode."""
    check_slide_id(slide_id)
    start = time.perf_counter()
    result = process(slide_id, slide_path, settings, sheet_mpp)
    if strict and result.status != "ok":
        raise StrictFailure(f"slide {slide_id} failed (strict mode): {result.reason}")
    write_outputs(result, settings, Layout(Path(out_dir)), time.perf_counter() - start)
    log.info(
        "slide %s: %s, %d patches%s", slide_id, result.status, result.n_patches,
        f" ({result.reason})" if result.reason else "",
    )  # fmt: skip
    return result
