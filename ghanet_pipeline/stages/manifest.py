"""``ghanet manifest``: arguments, settings and exit codes; the work is in ``ghanet_pipeline.io.manifest``."""

from __future__ import annotations

import argparse
import logging

from ghanet_pipeline.io import store
from ghanet_pipeline.io.manifest import gather, to_csv

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", required=True, help="the run's output root (reads OUT/status/*.json)")
    parser.add_argument("--output", required=True, help="manifest csv to write")


def main(args: argparse.Namespace) -> int:
    records = gather(args.out_dir)
    store.write_text(args.output, to_csv(records))
    failed = [r for r in records if not r.ok]
    log.info("manifest %s: %d slides, %d failed", args.output, len(records), len(failed))
    for record in failed:
        log.warning("failed slide %s: %s", record.slide_id, record.reason)
    if not records:
        log.warning("no status records under %s/status", args.out_dir)
    return 0
