"""Slide access by microns per pixel: open, resolve the resolution, choose a read level.

Pixels are read by :mod:`ghanet_pipeline.slides.regions`.

Any format OpenSlide reads (SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM, ...) opens
through :func:`open_slide`; every OpenSlide or file-system error becomes a
:class:`SlideError` that names the path, so a caller can record it and go on.

Resolution (um/px of level 0) is resolved in this order, and the source is recorded:

1. ``sample_sheet``: the sample sheet's ``mpp`` column (``ghanet tissue --mpp``);
2. ``slide_properties``: ``openslide.mpp-x`` / ``openslide.mpp-y``;
3. ``tiff_resolution``: ``tiff.XResolution`` / ``tiff.YResolution`` with ``tiff.ResolutionUnit``;
4. ``objective_power``: ``openslide.objective-power``, as ``10 / power`` um/px. This is an
   approximation (a 20x scan is about 0.5 um/px, but scanners differ by up to ~10 %);
5. ``config_default``: ``tissue.default_slide_mpp``.

Values a slide records that no microscope makes (outside 0.02-100 um/px, such as the
72 dpi a generic TIFF writer puts in by default) are ignored with a warning.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ghanet_pipeline.contracts.tiles import PatchGeometry

log = logging.getLogger(__name__)

PLAUSIBLE_MPP = (0.02, 100.0)
MICRONS_PER_UNIT = {"inch": 25400.0, "centimeter": 10000.0, "millimeter": 1000.0, "micrometer": 1.0}


class SlideError(RuntimeError):
    """A slide cannot be opened, has no usable resolution, or fails while reading pixels."""


@dataclass(frozen=True)
class Mpp:
    value: float
    source: str  # sample_sheet | slide_properties | tiff_resolution | objective_power | config_default


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
REMOVE_HINT = "or remove the slide from the sample sheet"


def check_slide_file(path: str | Path) -> Path:
    """The checks OpenSlide's own message would hide: missing, a symlink loop, a folder, empty,
    not readable."""
    p = Path(path)
    try:
        p.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:  # is_dir()/is_file() would call it merely "not found"
            raise SlideError(
                f"{p}: symlink loop (the link leads, through other links, back to itself) or too many levels of "
                f"links: point the sample sheet's 'path' at the slide file itself, {REMOVE_HINT}"
            ) from err
    except ValueError as err:  # a NUL byte in the name
        raise SlideError(f"{p!r} is not a usable file name ({err}); fix the sample sheet's 'path', {REMOVE_HINT}") from err
    if p.is_dir():
        raise SlideError(
            f"{p} is a directory, not a slide file: point the sample sheet's 'path' at the slide file itself "
            f"(for MRXS the .mrxs file next to the folder), {REMOVE_HINT}"
        )
    if not p.is_file():
        raise SlideError(f"slide file not found: {p} (check the 'path' column of the sample sheet, {REMOVE_HINT})")
    try:
        with open(p, "rb") as handle:
            head = handle.read(8)
    except PermissionError as err:
        raise SlideError(
            f"cannot read {p}: permission denied ({err.strerror}); give the user that runs the pipeline read access "
            f"(chmod a+r / chown), {REMOVE_HINT}"
        ) from err
    except OSError as err:
        raise SlideError(f"cannot read {p}: {type(err).__name__}: {err}; check the disk or copy the file again") from err
    if not head:
        raise SlideError(f"{p} is empty (0 bytes): an interrupted copy or download; copy the slide again, {REMOVE_HINT}")
    return p


def _unopenable_hint(p: Path) -> str:
    with open(p, "rb") as handle:
        head = handle.read(4)
    if head[:4] in TIFF_MAGIC:
        return (
            f"the file is a TIFF ({source_size(p)} bytes) that OpenSlide cannot read as a slide: truncated "
            f"(compare its size with the original and copy it again), damaged, or not a tiled whole-slide image; {REMOVE_HINT}"
        )
    return (
        f"the file is not a whole-slide image in a format OpenSlide reads (first bytes {head!r}): check that the path "
        f"names the right file and that it was copied completely, {REMOVE_HINT}"
    )


def open_slide(path: str | Path):
    """Open a slide with OpenSlide; any failure is a :class:`SlideError` naming the path, the cause
    and what to do."""
    import openslide

    p = check_slide_file(path)
    try:
        return openslide.OpenSlide(str(p))
    except (openslide.OpenSlideError, OSError, ValueError) as err:
        cause = f"OpenSlide cannot open {p}: {type(err).__name__}: {err}"
        try:
            hint = _unopenable_hint(p)
        except OSError:
            hint = f"check the file, {REMOVE_HINT}"
        raise SlideError(f"{cause}. {hint[0].upper()}{hint[1:]}") from err


def _positive(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _plausible(value: float | None, what: str, path: str) -> float | None:
    if value is None:
        return None
    if PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1]:
        return value
    log.warning("%s: ignoring %s = %.4g um/px (not a microscope resolution)", path, what, value)
    return None


def _mean_xy(x: float | None, y: float | None, what: str, path: str) -> float | None:
    if x is None or y is None:
        return x if y is None else y
    if abs(x - y) > 0.01 * max(x, y):
        log.warning("%s: %s differs in x (%.5g) and y (%.5g); using their mean", path, what, x, y)
    return (x + y) / 2


def mpp_from_tiff_tags(props: Mapping[str, str]) -> float | None:
    unit = str(props.get("tiff.ResolutionUnit", "")).strip().lower()
    per_unit = MICRONS_PER_UNIT.get(unit)
    if per_unit is None:
        return None
    xres, yres = _positive(props.get("tiff.XResolution")), _positive(props.get("tiff.YResolution"))
    x = per_unit / xres if xres else None
    y = per_unit / yres if yres else None
    return _mean_xy(x, y, "tiff resolution", "")


def resolve_mpp(
    props: Mapping[str, str],
    path: str | Path,
    sheet_mpp: float | None = None,
    default_mpp: float | None = None,
) -> Mpp:
    """Level-0 um/px of a slide and where it came from (see the module docstring)."""
    where = str(path)
    if sheet_mpp is not None:
        if not (math.isfinite(sheet_mpp) and sheet_mpp > 0):
            raise SlideError(f"{where}: the sample sheet's mpp {sheet_mpp!r} is not a positive number")
        return Mpp(float(sheet_mpp), "sample_sheet")
    x = _plausible(_positive(props.get("openslide.mpp-x")), "openslide.mpp-x", where)
    y = _plausible(_positive(props.get("openslide.mpp-y")), "openslide.mpp-y", where)
    value = _mean_xy(x, y, "openslide.mpp", where)
    if value is not None:
        return Mpp(value, "slide_properties")
    value = _plausible(mpp_from_tiff_tags(props), "the TIFF resolution tags", where)
    if value is not None:
        return Mpp(value, "tiff_resolution")
    power = _positive(props.get("openslide.objective-power"))
    value = _plausible(10.0 / power if power else None, "10 / objective power", where)
    if value is not None:
        log.warning("%s: mpp approximated from objective power %gx as %.4g um/px", where, power, value)
        return Mpp(value, "objective_power")
    if default_mpp is not None:
        log.warning("%s: no resolution recorded; using tissue.default_slide_mpp = %g um/px", where, default_mpp)
        return Mpp(float(default_mpp), "config_default")
    raise SlideError(
        f"{where}: no microns-per-pixel recorded (no openslide.mpp-x, TIFF resolution or objective power). "
        "Add an 'mpp' column to the sample sheet with this slide's um/px (about 0.25 at 40x, 0.5 at 20x), "
        "pass --mpp, or set tissue.default_slide_mpp in config.yaml"
    )


def pick_level(downsamples: tuple[float, ...] | list[float], mpp: float, target_mpp: float, tolerance: float) -> int:
    """The coarsest level whose um/px is not coarser than ``target_mpp * (1 + tolerance)``.

    That is the finest detail needed and no more: reading it and shrinking to the target is
    exact; a coarser level would lose detail. When even level 0 is coarser, level 0.
    """
    limit = target_mpp * (1 + tolerance)
    candidates = [i for i, d in enumerate(downsamples) if mpp * d <= limit]
    if not candidates:
        return 0
    return max(candidates, key=lambda i: downsamples[i])


def choose_level(
    downsamples: tuple[float, ...] | list[float],
    mpp: float,
    target_mpp: float,
    patch_size: int,
    tolerance: float,
) -> PatchGeometry:
    """Read level and patch sizes for ``patch_size`` px at ``target_mpp`` (requested vs effective)."""
    level = pick_level(downsamples, mpp, target_mpp, tolerance)
    downsample = float(downsamples[level])
    level_mpp = mpp * downsample
    if abs(level_mpp / target_mpp - 1) <= tolerance:
        patch_read = patch_size  # read as is: within tolerance of the target
    else:
        patch_read = max(1, int(round(patch_size * target_mpp / level_mpp)))
    patch_level0 = max(1, int(round(patch_read * downsample)))
    return PatchGeometry(
        read_level=level,
        read_downsample=downsample,
        read_level_mpp=level_mpp,
        target_mpp=target_mpp,
        patch_size=patch_size,
        patch_size_read=patch_read,
        patch_size_level0=patch_level0,
        effective_mpp=patch_level0 * mpp / patch_size,
        upsampled=level_mpp > target_mpp * (1 + tolerance),
    )


def absolute_path(path: str | Path) -> str:
    """The absolute, link-free path where it can be resolved; for a symlink loop (which
    ``Path.resolve`` reports as RuntimeError) or a bad name, the absolute path as given."""
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError, ValueError):
        return os.path.abspath(path)


def source_size(path: str | Path) -> int:
    try:
        return os.path.getsize(path)
    except (OSError, ValueError):
        return 0
