"""The manifest: per-slide status records (``OUT/status/*.json``) gathered into one csv, and read back.

One reader for every stage: :func:`read_manifest` (the csv as text), :func:`slide_status_table`
(the records, else the csv, for the report) and :func:`read_status` (one record, as
:class:`~ghanet_pipeline.contracts.tiles.SlideStatus`).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import pandas as pd

from ghanet_pipeline.contracts.base import ContractError, read_json_record
from ghanet_pipeline.contracts.tiles import SlideStatus
from ghanet_pipeline.io.layout import Layout

log = logging.getLogger("ghanet.manifest")

COLUMNS = ("slide_id", "status", "reason", "path", "n_patches", "n_blurred", "mpp", "mpp_source", "effective_mpp", "seconds")
REQUIRED_COLUMNS = ("slide_id", "status")


class ManifestError(ValueError):
    """A manifest csv is missing or lacks the columns a reader needs."""


def read_status(path: Path) -> SlideStatus:
    """A slide's status record; one that cannot be read counts as the slide failed, with the reason."""
    try:
        return read_json_record(SlideStatus, path)
    except ContractError as err:
        return SlideStatus(slide_id=path.stem, status="failed", reason=str(err))


def gather(out_dir: str | Path) -> list[SlideStatus]:
    """One record per ``status/*.json``, sorted by slide id."""
    folder = Layout(Path(out_dir)).status_dir
    records = [read_status(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return sorted(records, key=lambda r: str(r.slide_id))


def to_csv(records: list[SlideStatus]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = record.to_attrs()
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    return buffer.getvalue()


def read_manifest(path: str | Path) -> pd.DataFrame:
    """``manifest.csv`` with every cell as text (BOM and CRLF tolerated); ``reason`` is added when absent."""
    from ghanet_pipeline.io.sheet import SampleSheetError, read_table_text

    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest {p} not found; run 'ghanet manifest' (the tissue stage) first")
    try:
        text = read_table_text(p)
    except SampleSheetError as err:
        raise ManifestError(f"manifest {err}; rerun 'ghanet manifest'") from err
    table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"manifest {p}: missing column(s) {', '.join(missing)} (expected slide_id, status, ...)")
    if "reason" not in table.columns:
        table["reason"] = ""
    return table


def slide_status_table(out_dir: str | Path) -> pd.DataFrame:
    """One row per slide from the status records (the manifest's source), else from ``manifest.csv``;
    numeric columns of the csv as numbers. Empty when the run has neither."""
    records = gather(out_dir)
    if records:
        return pd.DataFrame.from_records([r.to_attrs() for r in records])
    path = Layout(Path(out_dir)).manifest
    if path.is_file():
        return _numbers_as_numbers(read_manifest(path))
    return pd.DataFrame()


def _numbers_as_numbers(table: pd.DataFrame) -> pd.DataFrame:
    """Columns whose every cell is a number become numeric (as ``pd.read_csv`` would type them)."""
    for column in table.columns:
        if column == "slide_id":
            continue
        try:
            table[column] = pd.to_numeric(table[column])
        except (ValueError, TypeError):
            pass  # text, or an empty cell: the column stays text
    return table
