"""Amortised feature jobs: `ghanet features` over a shard of slides with one encoder build.

A SIGKILL in the middle of a shard, then a rerun, redoes only the unfinished slides and gives
stores identical to an uninterrupted run; each slide keeps its own status and failure; complete
stores are kept unless asked (--redo) or stale (tiles rewritten)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_features import CMU, grid_coords, write_tiles_store

from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.features.extract import (
    ShardItem,
    complete_store_reason,
    extract_shard,
)
from ghanet_pipeline.io import store

REPO = Path(__file__).resolve().parents[1]
N_SLIDES = 4
SETTINGS = {"encoder": "test_efficientnet", "weights": "random", "batch_size": 4, "num_workers": 0}


def _settings(**overrides):
    return stage_settings("features", None, json.dumps({**SETTINGS, **overrides}))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The killed run is a subprocess with OMP_NUM_THREADS=1; same thread count, same features."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if before is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before


@pytest.fixture(scope="module")
def shard_tiles(tmp_path_factory) -> list[Path]:
    """Four 'slides': different tissue rows of the shipped CMU slide, 12 patches each at 128 px."""
    root = tmp_path_factory.mktemp("shard_tiles")
    return [write_tiles_store(root / f"S{i}.zarr", CMU, grid_coords(2220, 2967, 256, 12, y0=(3 + i) * 256),
                              patch_size=128, patch_size_read=256) for i in range(N_SLIDES)]


def _items(tiles: list[Path], out_dir: Path) -> list[ShardItem]:
    return [ShardItem(t, CMU, out_dir / t.name) for t in tiles]


@pytest.fixture(scope="module")
def uninterrupted(shard_tiles, tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    result = extract_shard(_items(shard_tiles, out_dir), _settings())
    assert result.exit_code == 0 and set(result.statuses.values()) == {"ok"}
    return out_dir


def _assert_same_store(a: Path, b: Path) -> None:
    ga, gb = store.open_store(a), store.open_store(b)
    np.testing.assert_array_equal(store.read_array(ga, "features"), store.read_array(gb, "features"))
    np.testing.assert_array_equal(store.read_array(ga, "coords"), store.read_array(gb, "coords"))
    for key in ("status", "n_patches", "encoder", "dim", "weights", "dtype", "slide_id"):
        assert ga.attrs[key] == gb.attrs[key], key


def test_sigkill_mid_shard_then_rerun_redoes_only_unfinished_slides(shard_tiles, uninterrupted, tmp_path):
    out_dir = tmp_path / "features"
    cmd = [sys.executable, "-m", "ghanet_pipeline", "features", "-v",
           "--tiles", *map(str, shard_tiles), "--slide-path", *[str(CMU)] * N_SLIDES,
           "--out", *[str(out_dir / t.name) for t in shard_tiles], "--settings", json.dumps(SETTINGS)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen = []
    try:
        for line in proc.stderr:  # kill while the third slide is being encoded
            seen.append(line)
            if f"[3/{N_SLIDES}]" in line:
                for line in proc.stderr:
                    seen.append(line)
                    if "batch 1/" in line:
                        proc.send_signal(signal.SIGKILL)
                        break
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    done = [p for p in (out_dir / t.name for t in shard_tiles) if p.exists()]
    assert [p.name for p in done] == ["S0.zarr", "S1.zarr"], "".join(seen[-20:])
    mtimes = {p: (p / "zarr.json").stat().st_mtime_ns for p in done}

    time.sleep(0.01)
    result = extract_shard(_items(shard_tiles, out_dir), _settings())
    assert result.exit_code == 0
    assert [result.statuses[str(out_dir / t.name)] for t in shard_tiles] == ["kept", "kept", "ok", "ok"]
    assert {p: (p / "zarr.json").stat().st_mtime_ns for p in done} == mtimes, "complete stores were rewritten"
    assert not list(out_dir.glob("*.tmp-*")), "the rerun left the killed run's temporary behind"
    for t in shard_tiles:
        _assert_same_store(out_dir / t.name, uninterrupted / t.name)


def test_each_slide_keeps_its_own_failure_and_redo_and_staleness(shard_tiles, uninterrupted, tmp_path):
    failed_tiles = write_tiles_store(tmp_path / "tiles" / "BAD.zarr", CMU, np.zeros((0, 2)), status="failed",
                                     reason="unreadable slide")
    missing_tiles = tmp_path / "tiles" / "GONE.zarr"  # the tiles stage never ran: that slide errors
    out_dir = tmp_path / "features"
    items = [ShardItem(failed_tiles, CMU, out_dir / "BAD.zarr"), ShardItem(missing_tiles, CMU, out_dir / "GONE.zarr"),
             *_items(shard_tiles[:2], out_dir)]
    result = extract_shard(items, _settings())
    assert [result.statuses[str(i.out)] for i in items] == ["failed", "error", "ok", "ok"]
    assert result.exit_code == 1, "a slide that could not be processed must fail the job (Snakemake reruns it)"
    assert store.open_store(out_dir / "BAD.zarr").attrs["reason"].startswith("tiles stage failed")
    for t in shard_tiles[:2]:
        _assert_same_store(out_dir / t.name, uninterrupted / t.name)

    # complete stores are kept (a failed one too: a failure is a result), unless asked or stale
    settings = _settings()
    assert complete_store_reason(out_dir / "BAD.zarr", failed_tiles, settings) == ""
    assert complete_store_reason(out_dir / "S0.zarr", shard_tiles[0], settings) == ""
    assert complete_store_reason(out_dir / "S0.zarr", shard_tiles[0], _settings(dtype="float32")) != ""
    os.utime(shard_tiles[1] / "zarr.json")  # the tissue stage rewrote S1's tiles after its features
    assert "older than its tiles" in complete_store_reason(out_dir / "S1.zarr", shard_tiles[1], settings)
    again = extract_shard(items[2:], settings, redo={out_dir / "S0.zarr"})
    assert list(again.statuses.values()) == ["ok", "ok"] and again.exit_code == 0
    third = extract_shard(items[2:], settings)
    assert list(third.statuses.values()) == ["kept", "kept"]


def test_cli_needs_one_value_per_slide(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ghanet_pipeline", "features", "--tiles", "a.zarr", "b.zarr",
                           "--slide-path", "a.svs", "--out", "a_out.zarr"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 2 and "one value per slide" in proc.stderr


def test_a_shard_of_one_slide_keeps_its_complete_store(shard_tiles, uninterrupted, tmp_path):
    """The workflow's shard rules pass --keep-complete: a one-slide shard (a plan's last shard)
    keeps a complete store, as larger shards do; a plain one-slide job redoes it."""
    out = tmp_path / shard_tiles[0].name
    shutil.copytree(uninterrupted / shard_tiles[0].name, out)
    stamp = (out / "zarr.json").stat().st_mtime_ns
    base = [sys.executable, "-m", "ghanet_pipeline", "features", "--tiles", str(shard_tiles[0]),
            "--slide-path", str(CMU), "--out", str(out), "--settings", json.dumps(SETTINGS)]
    kept = subprocess.run([*base, "--keep-complete"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert "complete, kept" in kept.stderr and (out / "zarr.json").stat().st_mtime_ns == stamp
    redone = subprocess.run(base, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert (out / "zarr.json").stat().st_mtime_ns != stamp
    _assert_same_store(out, uninterrupted / shard_tiles[0].name)
