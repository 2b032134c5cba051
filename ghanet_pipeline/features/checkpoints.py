"""Checkpoint files: finding the one ``features.weights`` names, reading its state dict, seeded builds."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from ghanet_pipeline.features.encoder_types import WeightsUnavailableError


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Deterministic random initialisation without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def existing_weights_file(weights: str, name: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"encoder {name}: features.weights points to {path}, which does not exist; "
            "put the checkpoint there or fix the path (or use 'default')"
        )
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from .safetensors / .pth / .bin, unwrapping common containers."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    prefixes = ("module.", "model.", "backbone.")
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state
