"""``ghanet genomics``: arguments, settings and exit codes; the flow is ``ghanet_pipeline.genomics.preprocess``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.genomics.folds import FoldError
from ghanet_pipeline.genomics.groups import GroupDefinitionError
from ghanet_pipeline.genomics.preprocess import GenomicsError, Inputs, run
from ghanet_pipeline.io.manifest import ManifestError
from ghanet_pipeline.io.sheet import SampleSheetError
from ghanet_pipeline.stages.arguments import add_settings_arguments
from ghanet_pipeline.survival.labels import LabelError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cohort-table", required=True, type=Path, help="MCAT-format table (csv, tsv, csv.zip)")
    parser.add_argument("--signatures", type=Path, help="group definition: csv of columns of genes, or .gmt (default: one group per modality)")
    parser.add_argument("--splits-dir", type=Path, help="folder of splits_{k}.csv (train, val); default: stratified folds")
    parser.add_argument("--samples", type=Path, help="sample sheet; a patient's usable slides come from it")
    parser.add_argument("--manifest", type=Path, help="manifest.csv of the tissue stage (slides not 'ok' are not usable)")
    parser.add_argument(
        "--allow-shared-slide-files", action="store_true",
        help="accept one slide file under several slide ids (config allow_shared_slide_files)",
    )  # fmt: skip
    parser.add_argument("--out-dir", required=True, type=Path, help="output folder (replaced as a whole when complete)")
    add_settings_arguments(parser)


def main(args: argparse.Namespace) -> int:
    settings = stage_settings("genomics", args.config, args.settings)
    inputs = Inputs(
        args.cohort_table, args.signatures, args.splits_dir, args.samples, args.manifest, args.allow_shared_slide_files
    )
    try:
        run(inputs, settings, args.out_dir)
    except (GenomicsError, GroupDefinitionError, FoldError, LabelError, ManifestError, SampleSheetError) as err:
        log.error("%s", err)
        return 1
    return 0
