"""One GPU per job (ghanet_pipeline.runtime.devices): concurrent jobs on a simulated 4-GPU machine
claim different devices, a SIGKILLed job frees its device, SLURM's allocation is used as is.

The device list is simulated with GHANET_SIMULATE_GPUS (the claim logic is the real one; the
locks are real fcntl locks held by real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# A job: resolve the device as a stage does, report it, then hold it until stdin closes.
JOB = """
import sys
from ghanet_pipeline.runtime.devices import resolve_device
print(resolve_device(sys.argv[1], "features.device"), flush=True)
sys.stdin.read()
"""


def _env(lock_dir: Path, n_gpus: int | None = 4, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    env.update({"GHANET_GPU_LOCK_DIR": str(lock_dir), "GHANET_GPU_WAIT_S": "0"})
    if n_gpus is not None:
        env["GHANET_SIMULATE_GPUS"] = str(n_gpus)
    env.update(extra)
    return env


def _start(env: dict[str, str], setting: str = "auto") -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", JOB, setting], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise AssertionError(f"job printed no device: {proc.stderr.read()}")
    return proc, line


def _stop(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=30)


def test_concurrent_jobs_get_different_gpus(tmp_path):
    env = _env(tmp_path)
    procs, devices = [], []
    try:
        for _ in range(4):
            proc, device = _start(env)
            procs.append(proc)
            devices.append(device)
        assert sorted(devices) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
        # a fifth job finds every GPU taken: it shares one (after GHANET_GPU_WAIT_S) and says so
        proc, device = _start(env)
        procs.append(proc)
        assert device in devices
    finally:
        _stop(procs)
    assert "all 4 visible GPU(s) are claimed" in procs[-1].stderr.read()


def test_sigkilled_job_frees_its_gpu(tmp_path):
    env = _env(tmp_path)
    first, d1 = _start(env)
    second, d2 = _start(env)
    assert (d1, d2) == ("cuda:0", "cuda:1")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    third, d3 = _start(env)
    try:
        assert d3 == "cuda:0", "the GPU of the killed job should be free again"
    finally:
        _stop([second, third])


def test_cuda_visible_devices_respected(tmp_path):
    # Two jobs restricted to physical GPUs 2 and 3: locks are keyed on physical ids, so a job
    # that sees all four afterwards skips 2 and 3 although they are its cuda:2 and cuda:3.
    a, da = _start(_env(tmp_path, CUDA_VISIBLE_DEVICES="2,3"))
    b, db = _start(_env(tmp_path, CUDA_VISIBLE_DEVICES="2,3"))
    c, dc = _start(_env(tmp_path))
    d, dd = _start(_env(tmp_path))
    try:
        assert (da, db) == ("cuda:0", "cuda:1")
        assert (dc, dd) == ("cuda:0", "cuda:1")
        locks = sorted(p.name.rsplit("-", 1)[-1] for p in tmp_path.glob("gpu-*.lock"))
        assert locks == ["0.lock", "1.lock", "2.lock", "3.lock"]
    finally:
        _stop([a, b, c, d])


def test_no_gpu_gives_cpu_or_a_clear_error(tmp_path):
    proc, device = _start(_env(tmp_path, n_gpus=0))
    _stop([proc])
    assert device == "cpu"
    proc = subprocess.run([sys.executable, "-c", JOB, "cuda"], env=_env(tmp_path, n_gpus=0), input="",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "CUDA is not available" in proc.stderr


def test_slurm_allocation_used_as_is(tmp_path):
    # SLURM gave this job a GPU (its cuda:0): used as is, no lock taken, even where another job
    # holds a lock on this host's GPU 0 (an unmanaged job would take cuda:1).
    holder, d0 = _start(_env(tmp_path, n_gpus=2))
    slurm_env = _env(tmp_path / "slurm", n_gpus=2, SLURM_JOB_ID="42", SLURM_JOB_GPUS="0")
    job, d1 = _start(slurm_env)
    other, d2 = _start(_env(tmp_path, n_gpus=2))
    try:
        assert (d0, d1, d2) == ("cuda:0", "cuda:0", "cuda:1")
        assert not (tmp_path / "slurm").exists(), "a SLURM job must not claim through locks"
    finally:
        _stop([holder, job, other])


def test_claim_is_one_per_process(tmp_path):
    code = ("from ghanet_pipeline.runtime.devices import resolve_device\n"
            "print(resolve_device('auto'), resolve_device('cuda'), resolve_device('auto'))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["cuda:0"] * 3, out.stderr


@pytest.mark.parametrize("value", ["four", "-1"])
def test_bad_simulation_value_is_named(tmp_path, value):
    out = subprocess.run([sys.executable, "-c", JOB, "auto"], env=_env(tmp_path, n_gpus=None,
                         GHANET_SIMULATE_GPUS=value), input="", capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "GHANET_SIMULATE_GPUS" in out.stderr
