"""The sample sheet: one row per slide (slide_id, case_id, path[, mpp]).

Read defensively: a BOM, Windows line endings and stray spaces are tolerated; unsafe or
duplicate slide ids, missing columns and bad mpp values are errors that name the row.
Relative slide paths are resolved against the sheet's own folder.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from .paths import UnsafeIdError, check_slide_id

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


def parse_samples(text: str, base_dir: str | Path = ".", source: str = "sample sheet") -> pd.DataFrame:
    """Parse sample-sheet csv text into a clean DataFrame (the testable core of read_samples)."""
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise SampleSheetError(f"{source}: not a readable csv: {err}") from err
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
    extra = [c for c in table.columns if c not in (*REQUIRED, "mpp")]
    return table[[*REQUIRED, "mpp", *extra]].reset_index(drop=True)


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


def read_samples(path: str | Path) -> pd.DataFrame:
    sheet = Path(path)
    if not sheet.is_file():
        raise SampleSheetError(f"sample sheet {sheet} not found; set 'samples' in config.yaml")
    return parse_samples(read_table_text(sheet), base_dir=sheet.parent, source=str(sheet))
