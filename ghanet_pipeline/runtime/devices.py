"""Where torch runs: one resolution of a `device` setting for every stage, one GPU per job.

``auto`` and ``cuda`` claim a free GPU among those visible (``CUDA_VISIBLE_DEVICES`` is
respected): several jobs started on one workstation (``snakemake --resources gpu=4``) each get
their own device, because Snakemake counts GPUs but does not assign them. A claim is an
exclusive ``fcntl.lockf`` lock on ``{lock dir}/gpu-{host}-{id}.lock`` held for the rest of the
process's life; the kernel drops it when the process exits, however it exits (SIGKILL too), so
no stale claim survives a crash. The lock dir is ``$GHANET_GPU_LOCK_DIR`` or
``/tmp/ghanet-gpu-locks`` (must be shared by the jobs of one machine; per-host names make a
shared file system safe too).

Under SLURM (``SLURM_JOB_ID`` set and a GPU allocation: ``SLURM_JOB_GPUS``/``SLURM_STEP_GPUS``,
or ``CUDA_VISIBLE_DEVICES`` set by SLURM) the job's first allocated GPU is used as is: SLURM
already isolates jobs. ``cuda:N`` is taken as given, unclaimed.

Tests simulate a machine with GPUs through ``GHANET_SIMULATE_GPUS=N``: the claim logic runs on
N fake device ids (``CUDA_VISIBLE_DEVICES`` still filters them) and the returned device is
``cuda:k`` without touching CUDA (nothing may compute on it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ghanet_pipeline.runtime import locks

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "GHANET_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = "/tmp/ghanet-gpu-locks"
SIMULATE_ENV = "GHANET_SIMULATE_GPUS"
WAIT_ENV = "GHANET_GPU_WAIT_S"  # how long to wait for a free GPU before sharing one
DEFAULT_WAIT_S = 60.0


class DeviceError(ValueError):
    """The configured device does not exist on this machine."""


@dataclass(frozen=True)
class GpuClaim:
    index: int  # torch's index among the visible devices (cuda:index)
    device_id: str  # the id the lock is keyed on (physical index or UUID from CUDA_VISIBLE_DEVICES)
    lock_path: Path | None  # None: not locked (SLURM-given, or shared because every GPU was busy)
    fd: int | None


# This process's claim: one per process, so every stage call in a job (one per slide of a
# feature shard) gets the same device. Filled on first use only.
_CLAIM: dict[str, GpuClaim] = {}


def _simulated_count() -> int | None:
    value = os.environ.get(SIMULATE_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise DeviceError(f"{SIMULATE_ENV}={value!r} is not a device count (a whole number)")
    return int(value)


def visible_gpu_ids(n_physical: int | None = None) -> list[str]:
    """Ids of the GPUs this process may use, in torch's order (cuda:0, cuda:1, ...).

    ``n_physical``: the machine's device count (simulated, or torch's when None). With
    ``CUDA_VISIBLE_DEVICES`` set, its entries are the ids (an empty value hides every GPU).
    """
    if n_physical is None:
        n_physical = _simulated_count()
    simulated = n_physical is not None
    if n_physical is None:
        import torch

        n_physical = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(n_physical)]
    ids = [s.strip() for s in listed.split(",") if s.strip()]
    if simulated:  # what CUDA does: ids beyond the machine are ignored (from the first bad one)
        kept = []
        for s in ids:
            if not (s.isdigit() and int(s) < n_physical):
                break
            kept.append(s)
        return kept
    return ids[:n_physical]  # torch already counted the visible ones


def slurm_gave_gpus() -> bool:
    env = os.environ
    if not env.get("SLURM_JOB_ID"):
        return False
    return bool(env.get("SLURM_JOB_GPUS") or env.get("SLURM_STEP_GPUS") or env.get("CUDA_VISIBLE_DEVICES"))


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)


def _try_lock(path: Path) -> int | None:
    """The lock's fd, or None when another process holds it (a shared lock file: mode 0o666)."""
    try:
        return locks.acquire(path, mode=0o666)
    except locks.LockHeldError:
        return None


def claim_gpu(ids: list[str], wait_s: float | None = None) -> GpuClaim:
    """Lock the first free GPU of ``ids`` for the life of this process (see the module doc).

    When all are taken, waits up to ``wait_s`` (default ``$GHANET_GPU_WAIT_S`` or 60 s) for one
    to free, then shares one with a warning rather than fail: a run with more GPU jobs than GPUs
    (no ``--resources gpu=N``) still finishes, as before claims existed.
    """
    if "claim" in _CLAIM:
        return _CLAIM["claim"]
    if not ids:
        raise DeviceError("no GPU is visible to claim")
    directory = lock_dir()
    if not directory.is_dir():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if directory == Path(DEFAULT_LOCK_DIR):
                with contextlib.suppress(PermissionError):  # another user's job made it first
                    os.chmod(directory, 0o1777)  # like /tmp: other users' jobs claim GPUs here too
        except OSError as err:
            raise DeviceError(f"cannot make the GPU lock folder {directory}: {err}; set {LOCK_DIR_ENV}") from err
    host = socket.gethostname()
    if wait_s is None:
        wait_s = float(os.environ.get(WAIT_ENV) or DEFAULT_WAIT_S)
    deadline = time.monotonic() + wait_s
    while True:
        for index, device_id in enumerate(ids):
            path = directory / f"gpu-{host}-{device_id.replace('/', '_')}.lock"
            try:
                fd = _try_lock(path)
            except OSError as err:
                raise DeviceError(
                    f"cannot use the GPU lock file {path}: {err}; set {LOCK_DIR_ENV} to a writable folder"
                ) from err
            if fd is not None:
                claim = GpuClaim(index, device_id, path, fd)
                _CLAIM["claim"] = claim
                log.info("claimed GPU %s (cuda:%d) for this job; lock %s", device_id, index, path)
                return claim
        if time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
    index = os.getpid() % len(ids)
    log.warning(
        "all %d visible GPU(s) are claimed by other jobs (locks in %s); sharing cuda:%d. "
        "Run snakemake with --resources gpu=%d so no more GPU jobs start than GPUs",
        len(ids), directory, index, len(ids),
    )
    claim = GpuClaim(index, ids[index], None, None)
    _CLAIM["claim"] = claim
    return claim


def resolve_device(name: str, setting: str = "device"):
    """``auto`` claims a free GPU when there is one, else the CPU; ``cuda`` claims a free GPU;
    ``cpu`` and ``cuda:N`` are taken as given."""
    import torch

    if name in ("auto", "cuda"):
        simulated = _simulated_count()
        ids = visible_gpu_ids(simulated)
        if not ids:
            if name == "auto":
                return torch.device("cpu")
            raise DeviceError(f"{setting} is 'cuda' but CUDA is not available here; use 'auto' or 'cpu'")
        if slurm_gave_gpus():
            return torch.device("cuda:0")  # SLURM isolated this job's GPU(s): use them as given
        claim = claim_gpu(ids)
        device = torch.device(f"cuda:{claim.index}")
        if simulated is None:
            torch.cuda.set_device(device)  # so code that says plain "cuda" lands on the claimed GPU
        return device
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"{setting} is {name!r}, not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{setting} is {name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return device
