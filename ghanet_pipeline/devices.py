"""Where torch runs: one resolution of a `device` setting for every stage."""

from __future__ import annotations


class DeviceError(ValueError):
    """The configured device does not exist on this machine."""


def resolve_device(name: str, setting: str = "device"):
    """``auto`` picks CUDA when present, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are taken as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"{setting} is {name!r}, not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{setting} is {name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return device
