"""``ghanet import-features``: arguments, settings and exit codes; the work is in ``ghanet_pipeline.features.importing``."""

from __future__ import annotations

import argparse
import logging

from ghanet_pipeline.features.importing import FORMATS, FeatureImportError, import_dir

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, help="folder of per-slide .h5 files (CLAM: its h5_files/; TRIDENT: features_ENC/ or the job folder)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="who wrote the files")
    parser.add_argument("--samples", required=True, help="the sample sheet: which slides to import")
    parser.add_argument("--out", required=True, help="feature-store folder to write (OUT/features/ENCODER)")
    parser.add_argument("--encoder", help="encoder name to record (default for TRIDENT: from features_ENCODER)")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="stored dtype (default float16)")
    parser.add_argument("--allow-shared-slide-files", action="store_true",
                        help="accept one slide file under several slide ids (config allow_shared_slide_files)")


def main(args: argparse.Namespace) -> int:
    from ghanet_pipeline.io.sheet import SampleSheetError, read_samples

    try:
        sheet = read_samples(args.samples, allow_shared_files=args.allow_shared_slide_files)
        import_dir(args.dir, args.format, args.out, list(sheet.slide_id), args.encoder, args.dtype)
    except (FeatureImportError, SampleSheetError) as err:
        log.error("%s", err)
        return 2
    return 0
