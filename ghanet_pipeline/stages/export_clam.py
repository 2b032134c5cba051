"""``ghanet export-clam``: arguments, settings and exit codes; the work is in ``ghanet_pipeline.features.export_clam``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ghanet_pipeline.contracts.base import ContractError
from ghanet_pipeline.features.export_clam import export_dir
from ghanet_pipeline.io.store import DamagedStoreError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features-dir", required=True, help="folder of feature stores (OUT/features/{encoder})")
    parser.add_argument("--out", required=True, help="CLAM folder to write (h5_files/, pt_files/)")


def main(args: argparse.Namespace) -> int:
    try:
        exported, skipped = export_dir(Path(args.features_dir), Path(args.out))
    except (DamagedStoreError, ContractError) as err:  # names the slide, the store and how to rebuild it
        log.error("%s", err)
        return 1
    if not exported and not skipped:
        log.error("no feature stores (*.zarr) in %s; run 'ghanet features' first", args.features_dir)
        return 2
    return 0
