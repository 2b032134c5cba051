"""Segment the tissue of one slide and lay its patch grid, by microns per pixel.

Writes ``OUT/tiles/{id}.zarr`` (coords + tissue mask + attributes), ``OUT/qc/{id}.png``,
``OUT/qc/{id}.geojson`` and ``OUT/status/{id}.json`` - also for a slide that cannot be read
(status ``failed`` with the reason), unless ``--strict``, which exits non-zero instead.

Segmentation is :mod:`ghanet_pipeline.slides.segmentation`. The patch grid may run past the
right and bottom edges (outside reads as white glass). The QC outlines and GeoJSON are drawn
from the mask the grid measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ghanet_pipeline.config import TissueSettings
from ghanet_pipeline.contracts.tiles import TILES_STORE, PatchGeometry, SlideStatus, TilesStoreAttrs, geometry_fields
from ghanet_pipeline.io import store
from ghanet_pipeline.io.layout import Layout, check_slide_id
from ghanet_pipeline.slides import patch_quality, qc, tiling
from ghanet_pipeline.slides.regions import thumbnail
from ghanet_pipeline.slides.segmentation import Segmentation, segment_slide, segmentation_params
from ghanet_pipeline.slides.slide import Mpp, SlideError, absolute_path, choose_level, open_slide, resolve_mpp, source_size

log = logging.getLogger("ghanet.tissue")

QC_MAX_SIDE = 1600


@dataclass
class SlideResult:
    slide_id: str
    path: str
    status: str = "failed"
    reason: str = ""
    mpp: Mpp | None = None
    level: PatchGeometry | None = None
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
            _resolve_geometry(slide, result, settings, sheet_mpp)
            result.timings["open"] = time.perf_counter() - t0
            done = _segment_and_tile(slide, result, settings)
            if qc_image:
                _read_qc_thumbnail(slide, result)
                result.timings["qc_read"] = time.perf_counter() - done
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
    return _succeeded(result)


def _resolve_geometry(slide, result: SlideResult, settings: TissueSettings, sheet_mpp: float | None) -> None:
    """Level-0 size, mpp and the patch geometry, with warnings for approximate or coarse resolutions."""
    result.level0_size = tuple(int(v) for v in slide.level_dimensions[0])
    result.mpp = resolve_mpp(slide.properties, result.path, sheet_mpp, settings.default_slide_mpp)
    if result.mpp.source in ("objective_power", "config_default"):
        result.warnings.append(f"mpp {result.mpp.value:.4g} from {result.mpp.source} (approximate)")
    result.level = choose_level(
        slide.level_downsamples, result.mpp.value, settings.target_mpp, settings.patch_size, settings.mpp_tolerance
    )
    if result.level.upsampled:
        result.warnings.append(
            f"slide resolution {result.level.read_level_mpp:.4g} um/px is coarser than target_mpp "
            f"{settings.target_mpp:g}: patches are upsampled from level 0"
        )


def _segment_and_tile(slide, result: SlideResult, settings: TissueSettings) -> float:
    """Segmentation, patch grid and blur scores into ``result``; returns the time it finished."""
    t1 = time.perf_counter()
    seg = segment_slide(slide, result.path, result.mpp.value, settings)
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
        _score_blur(result, result.path, settings)
        t3 = time.perf_counter()
        result.timings["quality"] = t3 - t2 - result.timings["patch"]
    seg.polygons = qc.polygons_from_mask(seg.tissue)  # the QC shows the mask the grid used
    result.segmentation = seg
    return t3


def _read_qc_thumbnail(slide, result: SlideResult) -> None:
    """The QC picture's background: the segmentation image when it is big enough, else a thumbnail."""
    seg = result.segmentation
    if max(seg.rgb.shape[:2]) >= QC_MAX_SIDE // 2:
        result.qc_thumb, result.qc_downsample = seg.rgb, seg.downsample
        return
    try:
        result.qc_thumb, result.qc_downsample = thumbnail(slide, result.path, QC_MAX_SIDE)
    except SlideError as err:  # the QC picture is not worth failing the slide for
        result.warnings.append(
            f"QC thumbnail not readable, the segmentation image is used instead; the features stage "
            f"will fail or skip patches in the damaged region: {err}"
        )


def _succeeded(result: SlideResult) -> SlideResult:
    result.status = "ok"
    if result.n_patches == 0:
        found = result.segmentation.tissue.any()
        result.warnings.append("tissue found but no patch reaches min_tissue_fraction" if found else "no tissue found: 0 patches")
    for warning in result.warnings:
        log.warning("slide %s: %s", result.slide_id, warning)
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


# ----------------------------------------------------------------------------- outputs


def store_attrs(result: SlideResult, settings: TissueSettings) -> TilesStoreAttrs:
    level, seg, mpp = result.level, result.segmentation, result.mpp
    grid = result.grid
    return TilesStoreAttrs(
        ghanet_store=TILES_STORE,
        status=result.status,
        reason=result.reason,
        warnings=tuple(result.warnings),
        slide_id=result.slide_id,
        source_path=absolute_path(result.path) if result.path else "",  # a symlink loop must not crash here
        source_size_bytes=source_size(result.path),
        level0_size=tuple(result.level0_size),
        mpp=mpp.value if mpp else None,
        mpp_source=mpp.source if mpp else None,
        # target_mpp and patch_size were asked for, so a failed slide (no geometry) records them too
        **{**geometry_fields(level), "target_mpp": settings.target_mpp, "patch_size": settings.patch_size},
        step_level0=tiling.step_for(level.patch_size_level0, settings.overlap) if level else None,
        overlap=settings.overlap,
        min_tissue_fraction=settings.min_tissue_fraction,
        mask_downsample=seg.downsample if seg else None,
        segmentation_level=seg.read_level if seg else None,
        saturation_thresholds_used=tuple(seg.threshold) if seg else None,
        pen_pixels=seg.pen_pixels if seg else 0,
        debris_pixels=seg.debris_pixels if seg else 0,
        n_candidates=grid.n_candidates if grid else 0,
        n_dropped_on_artifact=grid.n_dropped_artifact if grid else 0,
        n_past_edge=grid.n_past_edge if grid else 0,
        quality_mpp=settings.quality_mpp,
        quality_level=result.quality_level,
        blur_threshold=blur_threshold(settings),
        blur_dropped=settings.max_blur is not None,
        n_blurred=n_blurred(result, settings),
        n_dropped_blur=result.n_dropped_blur,
        n_fill_patches=grid.n_fill if grid else 0,
        outside_slide_reads_as="white",
        segmentation=segmentation_params(settings),
    )


def n_blurred(result: SlideResult, settings: TissueSettings) -> int:
    """Patches whose blur score is above the flag threshold (kept unless tissue.max_blur drops them)."""
    return int((result.blur > blur_threshold(settings)).sum()) if result.blur is not None else 0


def status_record(result: SlideResult, settings: TissueSettings, seconds: float) -> SlideStatus:
    return SlideStatus(
        slide_id=result.slide_id,
        status=result.status,
        reason=result.reason,
        path=result.path,
        n_patches=result.n_patches,
        n_blurred=n_blurred(result, settings),
        mpp=result.mpp.value if result.mpp else None,
        mpp_source=result.mpp.source if result.mpp else None,
        effective_mpp=result.level.effective_mpp if result.level else None,
        seconds=round(seconds, 3),
        warnings=tuple(result.warnings),
        timings={k: round(v, 4) for k, v in result.timings.items()},
    )


def write_outputs(result: SlideResult, settings: TissueSettings, layout: Layout, seconds: float) -> None:
    """The four outputs; the status record goes last (it marks the slide as done)."""
    ok = result.status == "ok"
    coords = result.grid.coords if (result.grid is not None and ok) else np.zeros((0, 2), np.int64)
    write_tiles_store(layout.tiles(result.slide_id), result, settings, coords)
    if ok:
        write_qc(result, settings, layout, coords)
    else:
        qc.write_png(layout.qc_png(result.slide_id), qc.failed_image(result.slide_id, result.reason))
        qc.write_geojson(layout.qc_geojson(result.slide_id), [], 1.0, result.slide_id)
    store.write_json(layout.status(result.slide_id), status_record(result, settings, seconds).to_attrs())


def write_tiles_store(path: Path, result: SlideResult, settings: TissueSettings, coords: np.ndarray) -> None:
    """``tiles/{id}.zarr``: attributes, coords, tissue mask and the per-patch quality arrays."""
    seg = result.segmentation if result.status == "ok" else None
    with store.atomic_path(path) as tmp:
        group = store.create_group(tmp, store_attrs(result, settings).to_attrs())
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


def write_qc(result: SlideResult, settings: TissueSettings, layout: Layout, coords: np.ndarray) -> None:
    """The QC picture (outlines, patches, blurred ones crossed) and the GeoJSON of a processed slide."""
    seg, level = result.segmentation, result.level
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
    qc.write_geojson(layout.qc_geojson(result.slide_id), seg.polygons, seg.downsample, result.slide_id, result.level0_size)


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
