"""Two runs on the same output: the second is refused with a clear message.

- Two Snakemake runs on one working directory: Snakemake's lock (``.snakemake/locks``)
  refuses the second while the first runs; an interrupted first run releases it.
- Two ``ghanet features`` on one feature store: the second exits 3 naming the store and the
  holder of ``{store}.lock`` (an fcntl lock, released even when its holder is SIGKILLed).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr
from workflow_util import REPO, tiny_demo_config

from ghanet_pipeline import cli
from ghanet_pipeline.demo import cohort as demo
from ghanet_pipeline.features.extract import exclusive_lock
from ghanet_pipeline.slides import synthetic


def start_snakemake(workdir: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]  # fmt: skip
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return condition()
        time.sleep(0.05)
    return False


def test_second_snakemake_run_on_the_same_directory_is_refused(tmp_path):
    tiny_demo_config(tmp_path, demo={"patients": 5, "seed": 3})
    locks = tmp_path / ".snakemake" / "locks"
    first = start_snakemake(tmp_path, "--cores", "1", "--until", "tissue")
    try:
        held = wait_for(lambda: locks.is_dir() and any(locks.iterdir()), 120, first)
        assert held, f"the first run never took its lock (exit {first.poll()}): {first.stderr.read() if first.poll() is not None else ''}"
        second = start_snakemake(tmp_path, "--cores", "1", "--until", "tissue")
        out, err = second.communicate(timeout=120)
        assert first.poll() is None, "the first run ended before the second was checked: make it slower"
        assert second.returncode != 0
        text = out + err
        assert "Directory cannot be locked" in text and "other Snakemake process" in text, text[-2000:]
        assert "--unlock" in text  # and what to do if the first run is really gone
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)  # what Ctrl-C does: jobs stopped, incomplete outputs removed
        try:
            first.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            first.kill()
            first.communicate()
    # the interrupted run released its lock: the directory is usable again, no --unlock needed
    assert not (locks.is_dir() and any(locks.iterdir())), list(locks.iterdir())


# ----------------------------------------------------------------------------- feature stores


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lock")
    slide = root / "s.svs"
    rgb, _ = demo.render_slide(demo.SlideRecipe("s", 2048, 1536, 0.3, (5, 1)))
    synthetic.write_aperio_svs_from_array(slide, rgb, mpp=0.5, levels=3, downsample=4)
    settings = json.dumps({"target_mpp": 2.0, "patch_size": 64})
    assert cli.main(["tissue", "--slide-id", "s", "--slide-path", str(slide), "--out-dir", str(root), "--settings", settings]) == 0
    return root / "tiles" / "s.zarr", slide


def _hold_lock(store: str, ready, release) -> None:
    with exclusive_lock(Path(store)):
        ready.set()
        release.wait(60)
    os._exit(0)


def features_cmd(tiles: Path, slide: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ghanet_pipeline", "features", "--tiles", str(tiles), "--slide-path", str(slide),
            "--out", str(out), "--settings", json.dumps({"num_workers": 0, "batch_size": 8})]  # fmt: skip


def test_second_extraction_of_the_same_store_is_refused(tiles, tmp_path):
    tiles_store, slide = tiles
    out = tmp_path / "features" / "s.zarr"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(out), ready, release))  # the "first extraction"
    holder.start()
    try:
        assert ready.wait(30)
        second = subprocess.run(features_cmd(tiles_store, slide, out), capture_output=True, text=True, timeout=300)
        assert second.returncode == 3, second.stderr[-2000:]
        assert str(out) in second.stderr and f"pid {holder.pid}" in second.stderr and "Wait for it" in second.stderr
        assert not out.exists() and not list(out.parent.glob(f"{out.name}.tmp-*"))
    finally:
        release.set()
        holder.join(30)
    # the holder dies by SIGKILL next time: its lock goes with it, and the store can be written
    ready.clear()
    release.clear()
    holder = ctx.Process(target=_hold_lock, args=(str(out), ready, release))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    assert cli.main(features_cmd(tiles_store, slide, out)[3:]) == 0
    assert dict(zarr.open_group(str(out), mode="r").attrs)["status"] == "ok"
