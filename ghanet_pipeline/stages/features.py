"""``ghanet features``: arguments, settings and exit codes; the work is in ``ghanet_pipeline.features.extract``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ghanet_pipeline.config import FeatureSettings, stage_settings
from ghanet_pipeline.features.extract import (
    FeatureError,
    ShardItem,
    StoreLockedError,
    extract,
    extract_shard,
)
from ghanet_pipeline.stages.arguments import add_settings_arguments

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiles", required=True, nargs="+",
                        help="tiles store(s) of the slide(s) (OUT/tiles/{id}.zarr); several = a shard")
    parser.add_argument("--slide-path", required=True, nargs="+", help="the slide file(s), in the same order")
    parser.add_argument("--out", required=True, nargs="+",
                        help="feature store(s) to write (OUT/features/{encoder}/{id}.zarr), in the same order")
    parser.add_argument(
        "--strict", action="store_true", help="exit non-zero instead of writing a failed store for a failed slide"
    )
    parser.add_argument(
        "--keep-complete", action="store_true",
        help="keep every store that is complete and current, also for a single slide (always so for several; "
             "the workflow's shard rules pass it, so a shard of one slide keeps its store too)",
    )
    parser.add_argument(
        "--redo", action="append", default=[], metavar="OUT",
        help="re-encode this store even when it is complete (may repeat; default: complete stores are kept)",
    )
    add_settings_arguments(parser)


def main(args: argparse.Namespace) -> int:
    settings: FeatureSettings = stage_settings("features", args.config, args.settings)
    if not len(args.tiles) == len(args.slide_path) == len(args.out):
        log.error("--tiles, --slide-path and --out need one value per slide each (got %d, %d and %d)",
                  len(args.tiles), len(args.slide_path), len(args.out))
        return 2
    items = [ShardItem(Path(t), Path(s), Path(o)) for t, s, o in zip(args.tiles, args.slide_path, args.out)]
    if len(items) == 1 and not (args.redo or args.keep_complete):  # one slide's job: its store redone
        return run_one(items[0], settings, args.strict)
    return extract_shard(items, settings, strict=args.strict, redo={Path(r) for r in args.redo}).exit_code


def run_one(item: ShardItem, settings: FeatureSettings, strict: bool) -> int:
    """One slide's job: its exit code (docs/contracts.md, "features")."""
    try:
        status = extract(item.tiles, item.slide_path, item.out, settings, strict=strict)
    except StoreLockedError as err:
        log.error("%s", err)
        return 3
    except FeatureError as err:  # only raised in strict mode
        log.error("%s", err)
        return 1
    except (FileNotFoundError, ValueError) as err:  # missing tiles store, weights offline, bad device/checkpoint
        log.error("%s", err)
        return 2
    return 0 if status == "ok" or not strict else 1
