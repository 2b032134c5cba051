"""``ghanet summarize``: arguments, settings and exit codes; the work is in ``ghanet_pipeline.training.summary``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ghanet_pipeline.contracts.base import ContractError
from ghanet_pipeline.io.layout import ModelFiles
from ghanet_pipeline.io.store import write_json
from ghanet_pipeline.training.errors import TrainInputError
from ghanet_pipeline.training.summary import summarize

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name (for the record)")
    parser.add_argument("--models-dir", required=True, help="OUT/models/{model}, holding fold*/result.json")
    parser.add_argument("--out", help="where to write summary.json (default: MODELS_DIR/summary.json)")


def main(args: argparse.Namespace) -> int:
    try:
        summary = summarize(args.models_dir, args.model)
    except (TrainInputError, ContractError) as err:
        log.error("%s", err)
        return 1
    out = Path(args.out) if args.out else ModelFiles(Path(args.models_dir)).summary
    write_json(out, summary.to_attrs())
    log.info("%s: final-epoch c-index %s +- %s over %d folds (best-epoch, optimistic: %s)", args.model,
             summary.cindex_final_mean, summary.cindex_final_std, len(summary.folds),
             summary.cindex_best_mean_optimistic)
    return 0
