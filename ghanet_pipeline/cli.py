"""``ghanet``: one command, one subcommand per stage.

Each stage module provides ``add_arguments(parser)`` and ``main(args) -> int``. Modules are
imported only for the subcommand that runs, so ``ghanet --help`` stays instant (no torch).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from . import __version__, logs
from .config import ConfigError

# name -> (module, one-line help). Order is the order of the workflow.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-cohort": ("ghanet_pipeline.demo", "write a synthetic cohort: slides, sample sheet, genomics, splits"),
    "samples": ("ghanet_pipeline.samples_cmd", "write a sample sheet from a folder of slides"),
    "tissue": ("ghanet_pipeline.tissue", "segment tissue and lay the patch grid of one slide"),
    "manifest": ("ghanet_pipeline.manifest", "gather per-slide status records into manifest.csv"),
    "features": ("ghanet_pipeline.features", "encode the patches of one slide into a Zarr feature store"),
    "export-clam": ("ghanet_pipeline.export_clam", "export feature stores to the CLAM layout (h5 + pt_files)"),
    "import-features": ("ghanet_pipeline.features_import", "turn CLAM / TRIDENT .h5 features into feature stores"),
    "genomics": ("ghanet_pipeline.genomics", "group genomic columns, make survival bins, folds and scalers"),
    "train": ("ghanet_pipeline.train", "train one model on one cross-validation fold"),
    "summarize": ("ghanet_pipeline.train", "gather the folds of one model into summary.json"),
    "infer": ("ghanet_pipeline.infer", "slide-only risk predictions and attention heatmaps"),
    "report": ("ghanet_pipeline.report", "the cohort report: report/index.html"),
}


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` (by hand) or ``--settings`` (from a rule): where a stage's settings come from."""
    group = parser.add_argument_group("settings (defaults come from the config schema)")
    group.add_argument("--config", metavar="YAML", help="config.yaml to read this stage's section from")
    group.add_argument("--settings", metavar="JSON", help="this stage's section as JSON (what rules pass)")


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghanet",
        description="G-HANet pipeline: whole-slide images to a slide-only prognosis model. "
        "Each subcommand is one Snakemake rule and also works by hand.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items())
        + "\n\n'ghanet STAGE --help' explains one stage.",
    )
    parser.add_argument("--version", action="version", version=f"ghanet-pipeline {__version__}")
    parser.add_argument("stage", choices=list(COMMANDS), metavar="STAGE", help="one of the stages below")
    return parser


def build_parser(stage: str) -> argparse.ArgumentParser:
    module_name, text = COMMANDS[stage]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"ghanet {stage}", description=(module.__doc__ or text).strip())
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    adder = getattr(module, f"add_arguments_{stage.replace('-', '_')}", None) or module.add_arguments
    adder(parser)
    runner = getattr(module, f"main_{stage.replace('-', '_')}", None) or module.main
    parser.set_defaults(_run=runner)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    # Before torch loads: idle OpenMP threads sleep instead of spinning. Spinning threads of
    # one job steal the cores of the job beside it (measured here: 2-30x slower steps when
    # Snakemake runs two torch jobs on two cores). A user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser(argv[0])
    args = parser.parse_args(argv[1:])
    logs.setup(args.verbose)
    try:
        return int(args._run(args) or 0)
    except ConfigError as err:
        logging.getLogger("ghanet").error("%s", err)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
