"""The sample sheet: one row per slide (slide_id, case_id, path[, mpp]).

Read defensively: a BOM, Windows line endings and stray spaces are tolerated; unsafe or
duplicate slide ids, missing or repeated columns and bad mpp values are errors that name the row.
Relative slide paths are resolved against the sheet's own folder. One slide file listed under
two slide ids (the same path, or a hard or symbolic link to it) is refused unless allowed:
otherwise one patient's bag holds another's slide, and across folds a slide can train in one
fold's training set and be scored in its validation set.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ghanet_pipeline.io.layout import UnsafeIdError, check_slide_id

REQUIRED = ("slide_id", "case_id", "path")


class SampleSheetError(ValueError):
    """The sample sheet cannot be used as it is."""


def read_table_text(path: str | Path) -> str:
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SampleSheetError(f"{path}: not UTF-8 text ({err}); save the sheet as UTF-8 csv") from err
    return text.replace("\r\n", "\n").replace("\r", "\n")


def raw_header(text: str, sep: str = ",") -> list[str]:
    """The header's names as written, stripped. pandas renames a repeated ``NAME`` to ``NAME.1``,
    so a repeated column can only be seen here. [] when the text is not a readable table."""
    try:
        head = pd.read_csv(io.StringIO(text), sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return []
    return [str(c).strip().replace("\r", "") for c in head.iloc[0]] if len(head) else []


def repeated_names(names: list[str]) -> list[str]:
    """Names that occur more than once (empty names, from trailing separators, do not count)."""
    return sorted(name for name, count in Counter(n for n in names if n).items() if count > 1)


def parse_samples(
    text: str, base_dir: str | Path = ".", source: str = "sample sheet", allow_shared_files: bool = False
) -> pd.DataFrame:
    """Parse sample-sheet csv text into a clean DataFrame (the testable core of read_samples).

    ``allow_shared_files``: accept one slide file under several slide ids (config key
    ``allow_shared_slide_files``); by default that is an error naming the ids and the file.
    """
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise SampleSheetError(f"{source}: not a readable csv: {err}") from err
    repeated = repeated_names(raw_header(text))
    if repeated:
        raise SampleSheetError(
            f"{source}: column(s) {', '.join(map(repr, repeated))} appear more than once in the header; "
            "keep one column of each name (a repeated column would be silently ignored)"
        )
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise SampleSheetError(
            f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, table.columns)) or 'none'}. "
            "A sample sheet needs slide_id, case_id, path (and optionally mpp)"
        )
    for column in REQUIRED:
        table[column] = table[column].astype(str).str.strip()
    problems = []
    for row, (slide_id, case_id, path) in enumerate(zip(table.slide_id, table.case_id, table.path), start=2):
        try:
            check_slide_id(slide_id)
        except UnsafeIdError as err:
            problems.append(f"line {row}: {err}")
        if not case_id:
            problems.append(f"line {row}: empty case_id for slide {slide_id!r}")
        if not path:
            problems.append(f"line {row}: empty path for slide {slide_id!r}")
    duplicated = sorted(set(table.slide_id[table.slide_id.duplicated()]))
    if duplicated:
        problems.append(f"duplicate slide_id(s): {', '.join(map(repr, duplicated))} (each slide once)")
    table["mpp"] = _parse_mpp(table.get("mpp"), table.slide_id, problems)
    if problems:
        raise SampleSheetError(f"{source}:\n  " + "\n  ".join(problems))
    base = Path(base_dir)
    table["path"] = [p if Path(p).is_absolute() else str(base / p) for p in table.path]
    if not allow_shared_files:
        shared = shared_files(table.slide_id, table.path)
        if shared:
            raise SampleSheetError(
                f"{source}: one slide file under several slide ids:\n  " + "\n  ".join(shared) + "\n"
                "A patient's bag would then hold another patient's slide, and a slide could train in one fold "
                "and be scored in another. List each slide file once (fix the 'path' of the wrong row), or, "
                "if the same file really belongs under both ids, set allow_shared_slide_files: true in config.yaml"
            )
    extra = [c for c in table.columns if c not in (*REQUIRED, "mpp")]
    return table[[*REQUIRED, "mpp", *extra]].reset_index(drop=True)


def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` names after following links; None when it cannot be
    stat'ed (missing, a symlink loop, an odd name): only existing files can be compared."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino)


def shared_files(slide_ids, paths) -> list[str]:
    """One line per file listed under more than one slide id: the ids and the file.

    Same file = same (device, inode): the same path, spelled differently, or a hard or symbolic
    link to it. Paths that do not exist are left to the tissue stage (it records them as failed).
    """
    by_file: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for slide_id, path in zip(slide_ids, paths):
        identity = file_identity(path)
        if identity is not None:
            by_file.setdefault(identity, []).append((slide_id, path))
    lines = []
    for rows in by_file.values():
        if len(rows) > 1:
            spellings = sorted({p for _, p in rows})
            names = ", ".join(repr(i) for i, _ in rows)
            lines.append(f"slides {names} are the same file {' = '.join(spellings)}")
    return lines


def _parse_mpp(column, slide_ids, problems: list[str]) -> list[float | None]:
    if column is None:
        return [None] * len(slide_ids)
    values: list[float | None] = []
    for slide_id, cell in zip(slide_ids, column):
        cell = str(cell).strip()
        if cell == "" or cell.lower() in {"nan", "na", "none"}:
            values.append(None)
            continue
        try:
            mpp = float(cell)
        except ValueError:
            mpp = float("nan")
        if not np.isfinite(mpp) or mpp <= 0 or mpp > 1000:
            problems.append(f"slide {slide_id!r}: mpp {cell!r} is not a positive number of microns per pixel")
            values.append(None)
        else:
            values.append(mpp)
    return values


def read_samples(path: str | Path, allow_shared_files: bool = False) -> pd.DataFrame:
    """Read a sample sheet; see :func:`parse_samples` for ``allow_shared_files``."""
    sheet = Path(path)
    if not sheet.is_file():
        raise SampleSheetError(f"sample sheet {sheet} not found; set 'samples' in config.yaml")
    return parse_samples(
        read_table_text(sheet), base_dir=sheet.parent, source=str(sheet), allow_shared_files=allow_shared_files
    )
