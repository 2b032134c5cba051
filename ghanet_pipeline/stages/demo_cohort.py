"""``ghanet demo-cohort``: arguments, settings and exit codes; the work is in ``ghanet_pipeline.demo.cohort``."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ghanet_pipeline.demo.cohort import generate
from ghanet_pipeline.stages.arguments import add_settings_arguments

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="folder to write the cohort into (created if missing)")
    parser.add_argument("--patients", type=int, help="number of patients (default: demo.patients of the config)")
    parser.add_argument("--seed", type=int, help="random seed; the same seed gives the same cohort (default: demo.seed)")
    parser.add_argument("--folds", type=int, default=None, help="cross-validation folds (default: genomics.n_folds)")
    parser.add_argument("--threads", type=int, default=1, help="slides rendered in parallel (default 1)")
    add_settings_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from ghanet_pipeline.config import stage_settings

    settings = stage_settings("demo", args.config, args.settings)
    folds = args.folds if args.folds is not None else stage_settings("genomics", args.config, None).n_folds
    patients = args.patients if args.patients is not None else settings.patients
    seed = args.seed if args.seed is not None else settings.seed
    if patients < max(2, folds):
        log.error("--patients %d is too few for %d folds; use at least %d patients", patients, folds, max(2, folds))
        return 2
    started = time.perf_counter()
    try:
        slides = generate(args.out, patients, seed, folds=folds, threads=args.threads)
    except ValueError as err:  # bad arguments, found before anything is written
        log.error("demo-cohort: %s", err)
        return 2
    out = Path(args.out)
    log.info(
        "demo cohort of %d patients, %d slides written in %.1f s to %s: samples.csv, cohort.csv, "
        "signatures.csv, splits/, slides/, truth/",
        patients, len(slides), time.perf_counter() - started, out.resolve(),
    )
    return 0
