"""Shared test fixtures: where the real data lives, and the repo root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# As `ghanet` does (cli.main): idle OpenMP threads sleep rather than spin, so in-process
# torch in the tests does not starve the subprocesses they start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (the project's shared/data folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """Folder of the `ghanet` and `snakemake` commands of this interpreter."""
    import sys

    return Path(sys.executable).parent


@pytest.fixture()
def env_with_venv(venv_bin) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    return env
