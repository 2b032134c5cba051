"""``ghanet report``: arguments, settings and exit codes; readers in ``ghanet_pipeline.report.readers``, the page in ``ghanet_pipeline.report.html``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.io.layout import Layout
from ghanet_pipeline.io.store import write_text
from ghanet_pipeline.report.html import build_report
from ghanet_pipeline.report.readers import parse_run_config
from ghanet_pipeline.stages.arguments import add_settings_arguments

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", required=True, help="the run's output folder (output_dir)")
    parser.add_argument("--run-config", metavar="JSON", help="the whole run configuration as JSON (or a file)")
    parser.add_argument("--output", help="where to write the HTML (default OUT/report/index.html)")
    add_settings_arguments(parser)


def main(args: argparse.Namespace) -> int:
    settings = stage_settings("report", args.config, args.settings)
    out = Path(args.out_dir)
    if not out.is_dir():
        log.error("--out-dir %s does not exist; point it at the run's output folder", out)
        return 2
    html_text = build_report(out, settings, parse_run_config(args.run_config))
    target = Path(args.output) if args.output else Layout(out).report
    write_text(target, html_text)
    log.info("wrote %s (%.1f MB)", target, len(html_text) / 1e6)
    return 0
