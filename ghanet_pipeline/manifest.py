"""Gather the per-slide status records (``OUT/status/*.json``) into one manifest csv."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path

from . import store

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", required=True, help="the run's output root (reads OUT/status/*.json)")
    parser.add_argument("--output", required=True, help="manifest csv to write")


def main(args: argparse.Namespace) -> int:
    rows = gather(args.out_dir)
    store.write_text(args.output, to_csv(rows))
    failed = [r for r in rows if r.get("status") != "ok"]
    log.info("manifest %s: %d slides, %d failed", args.output, len(rows), len(failed))
    for row in failed:
        log.warning("failed slide %s: %s", row.get("slide_id"), row.get("reason"))
    if not rows:
        log.warning("no status records under %s/status", args.out_dir)
    return 0
