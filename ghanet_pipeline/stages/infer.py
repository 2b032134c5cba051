"""``ghanet infer``: arguments, settings and exit codes; the work is in ``ghanet_pipeline.inference.predict``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.contracts.base import ContractError
from ghanet_pipeline.inference.predict import InferError, run
from ghanet_pipeline.io.store import DamagedStoreError
from ghanet_pipeline.runtime.devices import DeviceError
from ghanet_pipeline.stages.arguments import add_settings_arguments

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", required=True, help="models/ folder of a run (holds {model}/fold*/checkpoint_*.pt)")
    parser.add_argument("--samples", required=True, help="sample sheet csv (slide_id, case_id, path[, mpp])")
    parser.add_argument("--features-dir", required=True, help="feature stores folder (features/{encoder}) of these slides")
    parser.add_argument("--out-dir", required=True, help="writes OUT/predictions.csv and OUT/heatmaps/")
    parser.add_argument("--tiles-dir", help="tiles stores (for patch geometry); default OUT/tiles")
    parser.add_argument(
        "--allow-shared-slide-files", action="store_true",
        help="accept one slide file under several slide ids (config allow_shared_slide_files)",
    )  # fmt: skip
    add_settings_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from ghanet_pipeline.io.sheet import SampleSheetError, read_samples
    from ghanet_pipeline.model import DimensionMismatchError

    settings = stage_settings("infer", args.config, args.settings)
    try:
        samples = read_samples(args.samples, allow_shared_files=args.allow_shared_slide_files)
        run(samples, Path(args.models_dir), Path(args.features_dir), Path(args.out_dir), settings,
            Path(args.tiles_dir) if args.tiles_dir else None)
    except (InferError, DimensionMismatchError, SampleSheetError, DeviceError, FileNotFoundError,
            DamagedStoreError, ContractError) as err:
        log.error("%s", err)
        return 1
    return 0
