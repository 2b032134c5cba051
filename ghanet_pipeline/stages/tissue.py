"""``ghanet tissue``: arguments, settings and exit codes; the work is in ``ghanet_pipeline.slides.tissue``."""

from __future__ import annotations

import argparse
import logging

from ghanet_pipeline.io.layout import UnsafeIdError
from ghanet_pipeline.slides.tissue import StrictFailure, run
from ghanet_pipeline.stages.arguments import add_settings_arguments

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slide-id", required=True, help="the slide's id (a file name: letters, digits, . _ -)")
    parser.add_argument("--slide-path", required=True, help="the slide file (any format OpenSlide reads)")
    parser.add_argument("--mpp", type=float, default=None, help="level-0 microns per pixel (the sample sheet's mpp); overrides the slide's")
    parser.add_argument("--out-dir", required=True, help="output root: tiles/, qc/, status/ go under it")
    parser.add_argument(
        "--strict", action="store_true", help="exit non-zero on a bad slide instead of recording it (also 'strict: true' in --config)"
    )
    add_settings_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from ghanet_pipeline.config import load, stage_settings

    settings = stage_settings("tissue", args.config, args.settings)
    strict = bool(args.strict or (args.config and load(args.config).strict))  # config.yaml's strict: true
    try:
        run(args.slide_id, args.slide_path, args.out_dir, settings, args.mpp, strict)
    except UnsafeIdError as err:
        log.error("%s; nothing written", err)
        return 2
    except StrictFailure as err:
        log.error("%s", err)
        return 1
    return 0
