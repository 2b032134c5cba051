"""benchmarks/gpu_check.sh degrades gracefully without a GPU: its CPU-side setup (a generated
slide and its tiles store) runs quickly with --tiny, then it says there is no GPU and exits 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run benchmarks/gpu_check.sh itself")
def test_gpu_check_without_gpu_runs_setup_and_says_so(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--tiny", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "slide 2048 x 2048 px" in out and "64 patches" in out, out
    assert "no CUDA GPU here" in out, out
    assert (tmp_path / "giga.svs").stat().st_size > 0 and (tmp_path / "tiles" / "giga.zarr" / "zarr.json").is_file()
