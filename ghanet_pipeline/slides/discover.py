"""``ghanet samples DIR``: write a sample sheet (slide_id, case_id, path, mpp) from a folder of slides.

Every file OpenSlide recognises becomes one row (SVS, NDPI, MRXS, SCN, tiled TIFF, ...; a
folder of DICOM files is one slide). A file with a slide's extension that OpenSlide does not
recognise (truncated, damaged) is kept with a warning, so the tissue stage records it as
failed and the report shows it. Other files are skipped with a note.

- slide_id: the file name without its extension (a DICOM folder: the folder name), with
  characters a file name must not carry replaced by ``_``; every changed id is reported.
- case_id: the TCGA patient barcode (``TCGA-XX-XXXX``) found in the file name, or the
  first match of ``--case-regex`` (its group ``case``, else its first group, else the whole
  match); else the slide id.
- mpp: left empty when the slide records its resolution (the tissue stage reads it from the
  slide and records where it came from); slides without one are listed so their ``mpp``
  cell can be filled in (or ``tissue.default_slide_mpp`` set).

Two slides that would get the same id (the same file name in two folders) are refused: the
sheet is not written, and both paths are named.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ghanet_pipeline.io.layout import UnsafeIdError, check_slide_id

log = logging.getLogger(__name__)

TCGA_CASE = re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)
# Extensions that are never a slide on their own: spares opening every csv / png in a folder.
NEVER_SLIDES = {".csv", ".tsv", ".txt", ".md", ".json", ".yaml", ".yml", ".xml", ".png", ".jpg", ".jpeg",
                ".h5", ".pt", ".zarr", ".gz", ".zip", ".py", ".log", ".geojson", ".html", ".pdf", ".ini", ".dat"}
SLIDE_EXTENSIONS = {".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".vms", ".vmu", ".svslide", ".bif"}
UNRECOGNISED = "unrecognised"
SKIPPED_DIR_SUFFIXES = {".zarr"}
MAX_LISTED_SKIPS = 20  # a folder of thousands of non-slide files gets a count, not thousands of lines
DICOM_MAGIC_OFFSET = 128
MAX_ID_LENGTH = 200


class SamplesError(ValueError):
    """The folder cannot be turned into a sample sheet as it is."""


@dataclass(frozen=True)
class FoundSlide:
    """One slide found in the folder."""

    slide_id: str
    case_id: str
    path: Path  # what OpenSlide opens (a DICOM folder: one of its .dcm files)
    name: str  # the file (or DICOM folder) name the ids come from
    vendor: str
    mpp: float | None  # what the slide records (None: nothing usable)
    mpp_source: str  # slide_properties | tiff_resolution | objective_power | "" | "unreadable: ..."
    id_changed: bool


# ----------------------------------------------------------------------------- ids


def slide_id_from_name(name: str) -> str:
    """A valid slide id (see paths.check_slide_id) made from a file name."""
    # Accents dropped rather than replaced ('ü' -> 'u'): ids stay close to the file names.
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    text = re.sub(r"\.{2,}", ".", text)  # '..' is refused (path traversal)
    text = re.sub(r"_{2,}", "_", text)
    text = text.lstrip("._-").rstrip("_")[:MAX_ID_LENGTH].rstrip("_")
    return check_slide_id(text or "slide")


def case_id_from_name(name: str, slide_id: str, case_regex: re.Pattern[str] | None) -> str:
    """The case id from ``case_regex`` (when given) or a TCGA barcode, else the slide id."""
    if case_regex is not None:
        match = case_regex.search(name)
        if match:
            if "case" in case_regex.groupindex:
                value = match.group("case")
            elif case_regex.groups:
                value = match.group(1)
            else:
                value = match.group(0)
            if value:
                return value
        return slide_id
    match = TCGA_CASE.search(name)
    return match.group(0).upper() if match else slide_id


def _stem(path: Path) -> str:
    name = path.name
    for double in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return path.stem if path.suffix else name


# ----------------------------------------------------------------------------- finding slides


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(DICOM_MAGIC_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_member(folder: Path) -> Path | None:
    """One DICOM file of ``folder`` (OpenSlide opens the whole series from any of them), or None."""
    for child in sorted(folder.iterdir()):
        if child.is_file() and (child.suffix.lower() == ".dcm" or not child.suffix) and _is_dicom_file(child):
            return child
    return None


def _detect(path: Path) -> str | None:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError, ValueError):
        return None


def find_slides(root: Path, recursive: bool) -> tuple[list[tuple[Path, str, str]], list[Path]]:
    """``([(openable path, name for the id, vendor)], [skipped non-slide files])``, sorted."""
    found: list[tuple[Path, str, str]] = []
    skipped: list[Path] = []

    def visit(folder: Path) -> None:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
        mrxs_dirs = {p.with_suffix("").name for p in entries if p.is_file() and p.suffix.lower() == ".mrxs"}
        for entry in entries:
            if entry.name.startswith("."):
                continue  # .DS_Store, ._foo, hidden tool folders
            if entry.is_dir():
                if entry.name in mrxs_dirs:
                    continue  # the data folder of an MRXS slide, opened through the .mrxs file
                if entry.suffix.lower() in SKIPPED_DIR_SUFFIXES:
                    continue  # pipeline outputs (thousands of chunk files, never slides)
                member = _dicom_member(entry)
                if member is not None:
                    vendor = _detect(member)
                    if vendor:
                        found.append((member, entry.name, vendor))
                    else:
                        skipped.append(entry)
                    continue
                if recursive:
                    visit(entry)
                continue
            if not entry.is_file():
                continue
            if entry.suffix.lower() in NEVER_SLIDES:
                skipped.append(entry)
                continue
            if entry.suffix.lower() == ".dcm":
                continue  # DICOM files count as one slide per folder (above), not one per file
            vendor = _detect(entry)
            if vendor:
                found.append((entry, _stem(entry), vendor))
            elif entry.suffix.lower() in SLIDE_EXTENSIONS:
                # A slide by its name that OpenSlide does not recognise: truncated or damaged. Kept,
                # so the tissue stage records it as failed and the report shows it.
                found.append((entry, _stem(entry), UNRECOGNISED))
            else:
                skipped.append(entry)

    if not root.is_dir():
        raise SamplesError(f"{root} is not a folder; give the folder that holds the slides")
    visit(root)
    # DICOM files directly in the root folder make the root itself one slide.
    member = _dicom_member(root)
    if member is not None and _detect(member):
        found.append((member, root.resolve().name, _detect(member) or "dicom"))
    return found, skipped


def read_mpp(path: Path) -> tuple[float | None, str]:
    """The level-0 um/px the slide records and its source (slide.resolve_mpp), or (None, why not)."""
    from ghanet_pipeline.slides.slide import SlideError, open_slide, resolve_mpp

    try:
        slide = open_slide(path)
    except SlideError as err:
        return None, f"unreadable: {err}"
    try:
        mpp = resolve_mpp(slide.properties, path)
        return mpp.value, mpp.source
    except SlideError:
        return None, ""
    finally:
        slide.close()


# ----------------------------------------------------------------------------- the sheet


def scan(root: str | Path, recursive: bool = False, case_regex: str | None = None) -> tuple[list[FoundSlide], list[Path]]:
    """Find the slides under ``root`` and give each its ids and mpp; duplicates are a SamplesError."""
    pattern = None
    if case_regex:
        try:
            pattern = re.compile(case_regex)
        except re.error as err:
            raise SamplesError(f"--case-regex {case_regex!r} is not a valid regular expression: {err}") from err
    located, skipped = find_slides(Path(root), recursive)
    slides: list[FoundSlide] = []
    for path, name, vendor in located:
        try:
            slide_id = slide_id_from_name(name)
        except UnsafeIdError as err:  # pragma: no cover - slide_id_from_name only makes valid ids
            raise SamplesError(f"{path}: {err}") from err
        mpp, source = read_mpp(path)
        slides.append(
            FoundSlide(
                slide_id=slide_id,
                case_id=case_id_from_name(name, slide_id, pattern),
                path=path,
                name=name,
                vendor=vendor,
                mpp=mpp,
                mpp_source=source,
                id_changed=slide_id != name,
            )
        )
    _refuse_duplicates(slides)
    return slides, skipped


def _refuse_duplicates(slides: list[FoundSlide]) -> None:
    # Case-insensitive: 'A.svs' and 'a.svs' would overwrite each other's outputs on macOS / Windows.
    by_id: dict[str, list[FoundSlide]] = {}
    for s in slides:
        by_id.setdefault(s.slide_id.lower(), []).append(s)
    clashes = [group for group in by_id.values() if len(group) > 1]
    if clashes:
        lines = [
            f"slide id {group[0].slide_id!r} would be used by " + ", ".join(str(s.path) for s in group)
            for group in clashes
        ]
        raise SamplesError(
            "duplicate slide ids, no sheet written:\n  " + "\n  ".join(lines) + "\n"
            "Every slide needs its own id (it names the output files). Rename one of the files, move the copy "
            "out of the folder if it is the same slide, or give a folder without the duplicates."
        )


def sheet_text(slides: list[FoundSlide], sheet_dir: Path) -> str:
    """The csv: paths relative to the sheet's folder when the slide is under it, else absolute."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "case_id", "path", "mpp"])
    base = sheet_dir.resolve()
    for s in slides:
        full = s.path.resolve()
        try:
            shown = full.relative_to(base).as_posix()
        except ValueError:
            shown = str(full)
        writer.writerow([s.slide_id, s.case_id, shown, ""])
    return buffer.getvalue()


def report(slides: list[FoundSlide], skipped: list[Path]) -> None:
    """Log what the sheet holds and what the user must check."""
    for s in slides:
        mpp = f"{s.mpp:.4g} um/px ({s.mpp_source})" if s.mpp else ("unreadable" if s.mpp_source else "no mpp")
        log.info("%s: %s, %s", s.slide_id, s.vendor, mpp)
    changed = [s for s in slides if s.id_changed]
    for s in changed:
        log.warning("slide id changed: %r -> %r (ids are letters, digits, '.', '_', '-')", s.name, s.slide_id)
    for path in skipped[:MAX_LISTED_SKIPS]:
        log.info("skipped (not a slide OpenSlide opens): %s", path)
    if len(skipped) > MAX_LISTED_SKIPS:
        log.info("... and %d more files that are not slides", len(skipped) - MAX_LISTED_SKIPS)
    for s in slides:
        if s.vendor == UNRECOGNISED:
            log.warning("%s: %s has a slide's extension but OpenSlide does not recognise it (truncated or damaged?); "
                        "kept in the sheet, the tissue stage will record it as failed", s.slide_id, s.path)
    unreadable = [s for s in slides if s.mpp_source.startswith("unreadable") and s.vendor != UNRECOGNISED]
    for s in unreadable:
        log.warning("%s: %s (kept in the sheet; the tissue stage will record it as failed)", s.slide_id, s.mpp_source)
    approximate = [s for s in slides if s.mpp_source == "objective_power"]
    if approximate:
        log.warning(
            "%d slide(s) record only an objective power, so their mpp is approximate (10 / power): %s; "
            "put the true um/px in the mpp column if you know it",
            len(approximate), ", ".join(s.slide_id for s in approximate),
        )  # fmt: skip
    missing = [s for s in slides if s.mpp is None and not s.mpp_source.startswith("unreadable")]
    if missing:
        log.warning(
            "%d slide(s) record no microns per pixel: %s. Fill in their 'mpp' cells (about 0.25 at 40x, "
            "0.5 at 20x) or set tissue.default_slide_mpp, or the tissue stage will fail them",
            len(missing), ", ".join(s.slide_id for s in missing),
        )  # fmt: skip
    fallback = sum(1 for s in slides if s.case_id == s.slide_id)
    if fallback:
        log.info("%d slide(s) have no case id in their name: case_id = slide_id (one patient per slide)", fallback)


def write_sheet(
    root: str | Path, out: str | Path, recursive: bool = False, case_regex: str | None = None, force: bool = False
) -> list[FoundSlide]:
    """Scan ``root`` and write the sheet to ``out`` (atomically); returns the slides written."""
    from ghanet_pipeline.io.sheet import parse_samples
    from ghanet_pipeline.io.store import write_text

    out = Path(out)
    if out.exists() and not force:
        raise SamplesError(f"{out} exists; give another --out or pass --force to replace it")
    slides, skipped = scan(root, recursive, case_regex)
    if not slides:
        hint = "" if recursive else " (slides in sub-folders need --recursive)"
        raise SamplesError(f"no slide OpenSlide can open in {root}{hint}; no sheet written")
    report(slides, skipped)
    text = sheet_text(slides, out.parent)
    parse_samples(text, base_dir=out.parent, source=str(out))  # the sheet must read back as written
    write_text(out, text)
    log.info("%d slide(s) of %d case(s) written to %s", len(slides), len({s.case_id for s in slides}), out)
    return slides
