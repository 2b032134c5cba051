"""Run the real Snakefile on a config in a temporary folder (shared by the workflow tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def tiny_demo_config(workdir: Path, **sections) -> Path:
    """A demo config small enough for tests; ``sections`` override top-level keys."""
    cfg = {
        "output_dir": "results",
        "demo": {"enabled": True, "patients": 6, "seed": 3, "dir": "demo_data"},
        "features": {"batch_size": 16, "num_workers": 0},
        # The workflow tests test the workflow: no gap-filling patches and no blur scores, which
        # the tissue tests cover and which would double the patches every stage has to carry.
        "tissue": {"fill_min_new_tissue": None, "quality_mpp": None},
        "train": {"models": ["ghanet", "snn"], "epochs": 2, "grad_accum": 4},
        "genomics": {"n_folds": 2, "n_bins": 2},  # a tiny cohort has few events
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """``snakemake`` from this interpreter's environment, on the repo's Snakefile, in ``workdir``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *args,
    ]
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result
