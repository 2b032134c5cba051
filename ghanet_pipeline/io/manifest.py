"""Gather the per-slide status records (``OUT/status/*.json``) into one manifest csv."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

log = logging.getLogger("ghanet.manifest")

COLUMNS = ("slide_id", "status", "reason", "path", "n_patches", "n_blurred", "mpp", "mpp_source", "effective_mpp", "seconds")


def read_status(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return {"slide_id": path.stem, "status": "failed", "reason": f"unreadable status record {path}: {err}"}
    if not isinstance(record, dict):
        return {"slide_id": path.stem, "status": "failed", "reason": f"status record {path} is not a JSON object"}
    return record


def gather(out_dir: str | Path) -> list[dict]:
    """One row per ``status/*.json``, sorted by slide id."""
    folder = Path(out_dir) / "status"
    rows = [read_status(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return sorted(rows, key=lambda r: str(r.get("slide_id", "")))


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    return buffer.getvalue()
