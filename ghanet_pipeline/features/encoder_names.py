"""Encoder names, checkable without torch: the Snakefile refuses an unknown ``features.encoder``
at parse time, before any job runs (otherwise only the first features job would, after tissue).

Importing :mod:`ghanet_pipeline.features.encoders` loads torch (seconds on every Snakemake start), so the
registry's names are listed here too; a test keeps them equal to ``encoders.REGISTRY``.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from ghanet_pipeline.features.encoder_presets import find_preset

REGISTERED = ("efficientnet_lite0", "resnet50_trunc")  # = encoders.REGISTRY's keys
HF_HUB_PREFIX = "hf-hub:"


class UnknownEncoderError(ValueError):
    """``features.encoder`` names no encoder this installation can build."""


def _timm_knows(name: str) -> bool | None:
    """Whether timm has this architecture (a ``name.tag`` is checked by its name); None when
    timm cannot be imported (the features stage then checks)."""
    try:
        import timm  # heavy (torch): only for names outside the registry
    except ImportError:
        return None
    return bool(timm.is_model(name.split(".")[0]))


def _timm_names() -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return list(timm.list_models())


def check_encoder_name(name: str, registered: Iterable[str] = REGISTERED) -> str:
    """Return ``name`` when it is a registry name, an ``hf-hub:org/name`` id (checked when the
    features stage builds it: offline it cannot be), or a timm model name; else raise
    :class:`UnknownEncoderError` listing the known names and the closest matches."""
    registered = tuple(registered)
    if name in registered or find_preset(name) is not None:  # presets: pathology foundation encoders
        return name
    if name.startswith(HF_HUB_PREFIX) and len(name) > len(HF_HUB_PREFIX):
        return name
    if _timm_knows(name) is not False:
        return name
    close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)  # the registry's first
    close += [m for m in difflib.get_close_matches(name, _timm_names(), n=3, cutoff=0.6) if m not in close]
    close = close[:3]
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise UnknownEncoderError(
        f"features.encoder {name!r} is unknown: not in the registry ({', '.join(registered)}) and not a timm model "
        f"name.{hint} Set features.encoder to a registry name, a timm model name "
        "(python -c 'import timm; print(timm.list_models())') or 'hf-hub:org/name'"
    )
