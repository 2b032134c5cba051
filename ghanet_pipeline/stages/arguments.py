"""Arguments shared by the stage commands."""

from __future__ import annotations

import argparse


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` (by hand) or ``--settings`` (from a rule): where a stage's settings come from."""
    group = parser.add_argument_group("settings (defaults come from the config schema)")
    group.add_argument("--config", metavar="YAML", help="config.yaml to read this stage's section from")
    group.add_argument("--settings", metavar="JSON", help="this stage's section as JSON (what rules pass)")
