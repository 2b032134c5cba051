"""``ghanet``: one command, one subcommand per stage.

Subcommands are registered in ``STAGES``; each is a module of ``ghanet_pipeline.stages``,
imported only for the subcommand that runs, so ``ghanet --help`` stays instant (no torch).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from types import ModuleType

from ghanet_pipeline import __version__
from ghanet_pipeline.config import ConfigError
from ghanet_pipeline.runtime import logs, memory


@dataclass(frozen=True)
class Stage:
    """One subcommand: its help line and the stage module that implements it.

    The module is imported only when its subcommand runs, so ``ghanet --help`` needs no torch.
    It provides ``add_arguments(parser)`` and ``main(args) -> int``.
    """

    help: str
    module: str  # a module of ghanet_pipeline.stages

    @property
    def module_path(self) -> str:
        return f"ghanet_pipeline.stages.{self.module}"

    def load(self) -> ModuleType:
        return importlib.import_module(self.module_path)


# The order is the workflow's.
STAGES: dict[str, Stage] = {
    "demo-cohort": Stage("write a synthetic cohort: slides, sample sheet, genomics, splits", "demo_cohort"),
    "samples": Stage("write a sample sheet from a folder of slides", "samples"),
    "tissue": Stage("segment tissue and lay the patch grid of one slide", "tissue"),
    "manifest": Stage("gather per-slide status records into manifest.csv", "manifest"),
    "features": Stage("encode the patches of slides into Zarr feature stores", "features"),
    "export-clam": Stage("export feature stores to the CLAM layout (h5 + pt_files)", "export_clam"),
    "import-features": Stage("turn CLAM / TRIDENT .h5 features into feature stores", "import_features"),
    "genomics": Stage("group genomic columns, make survival bins, folds and scalers", "genomics"),
    "train": Stage("train one model on one cross-validation fold", "train"),
    "summarize": Stage("gather the folds of one model into summary.json", "summarize"),
    "infer": Stage("slide-only risk predictions and attention heatmaps", "infer"),
    "report": Stage("the cohort report: report/index.html", "report"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghanet",
        description="G-HANet pipeline: whole-slide images to a slide-only prognosis model. "
        "Each subcommand is one Snakemake rule and also works by hand.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {name:<12} {stage.help}" for name, stage in STAGES.items())
        + "\n\n'ghanet STAGE --help' explains one stage.",
    )
    parser.add_argument("--version", action="version", version=f"ghanet-pipeline {__version__}")
    parser.add_argument("stage", choices=list(STAGES), metavar="STAGE", help="one of the stages below")
    return parser


def build_parser(stage: str) -> argparse.ArgumentParser:
    module = STAGES[stage].load()
    parser = argparse.ArgumentParser(prog=f"ghanet {stage}", description=STAGES[stage].help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.add_arguments(parser)
    parser.set_defaults(_run=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    # Before torch loads: idle OpenMP threads sleep instead of spinning. Spinning threads of
    # one job steal the cores of the job beside it (measured here: 2-30x slower steps when
    # Snakemake runs two torch jobs on two cores). A user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    memory.retain_freed_memory()
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
