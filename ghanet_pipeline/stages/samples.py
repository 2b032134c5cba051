"""``ghanet samples``: arguments, settings and exit codes; the work is in ``ghanet_pipeline.slides.discover``."""

from __future__ import annotations

import argparse
import logging

from ghanet_pipeline.slides.discover import SamplesError, write_sheet

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="folder with the slides")
    parser.add_argument("--out", default="samples.csv", help="sample sheet to write (default: samples.csv)")
    parser.add_argument("--recursive", action="store_true", help="also look in sub-folders")
    parser.add_argument(
        "--case-regex", metavar="RE",
        help="regular expression for the case id in a file name (group 'case', else group 1, else the match); "
        "default: a TCGA barcode TCGA-XX-XXXX, else the slide id",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")


def main(args: argparse.Namespace) -> int:
    try:
        write_sheet(args.dir, args.out, args.recursive, args.case_regex, args.force)
    except SamplesError as err:
        log.error("%s", err)
        return 2
    return 0
