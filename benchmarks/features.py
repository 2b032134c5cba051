"""Feature-stage benchmark: reader speed, pipeline efficiency, peak memory vs slide size.

    python benchmarks/features.py [--quick] [--workdir DIR]

(a) reader alone: patches/s of the block reader (one read_region per run of adjacent
    patches, DataLoader workers) vs one read_region per patch in one loop; target >= 2x.
(b) pipeline efficiency: end-to-end patches/s slide -> store (``features.extract``) divided by
    encoder-only patches/s on pre-made normalised tensors; same model (resnet50_trunc, random
    weights), batch size and device; target >= 0.9.
(c) peak RSS of ``ghanet features`` (a subprocess per size) on grids of ~12.5k and ~50k
    patches of one synthetic slide each; target: flat. The whole grid is processed; patches
    are small (64 px read, 32 px encoded) so the run stays moderate: memory is what is measured.

Prints figures and ratios; the numbers depend on the machine and on its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ghanet_pipeline.config import stage_settings  # noqa: E402
from ghanet_pipeline.io import store  # noqa: E402
from ghanet_pipeline.slides import synthetic

log = logging.getLogger("bench.features")


def texture_tile_fn(seed: int = 0):
    """Tissue-like random texture (cheap: one precomputed 1024 px block, shifted per tile)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    import cv2

    block = cv2.resize(base, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    block = np.clip(block.astype(np.int16) + rng.integers(-20, 20, size=block.shape), 0, 255).astype(np.uint8)
    block = np.tile(block, (2, 2, 1))

    def tile_fn(x0: int, y0: int, w: int, h: int) -> np.ndarray:
        ox, oy = (x0 * 7 + y0 * 3) % 1024, (y0 * 5 + x0) % 1024
        return block[oy : oy + h, ox : ox + w]

    return tile_fn


def make_slide(path: Path, width: int, height: int, mpp: float = 0.5, levels: int = 1) -> Path:
    if not path.exists():
        t = time.perf_counter()
        with store.atomic_path(path) as tmp:
            synthetic.write_aperio_svs(tmp, width, height, texture_tile_fn(), mpp=mpp, tile=256, levels=levels, maxworkers=2)
        log.info("wrote %s (%dx%d) in %.1f s", path.name, width, height, time.perf_counter() - t)
    return path


def write_tiles(path: Path, slide: Path, width: int, height: int, read_px: int, target_px: int, limit: int | None = None):
    xs = np.arange(0, width - read_px + 1, read_px)
    ys = np.arange(0, height - read_px + 1, read_px)
    coords = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.int64)  # row-major: y then x
    if limit:
        coords = coords[:limit]
    attrs = {
        "ghanet_store": "tiles", "status": "ok", "reason": "", "slide_id": path.name[:-5], "source_path": str(slide),
        "target_mpp": 0.5 * read_px / target_px, "effective_mpp": 0.5 * read_px / target_px, "read_level": 0,
        "read_downsample": 1.0, "patch_size": target_px, "patch_size_read": read_px, "patch_size_level0": read_px,
        "step_level0": read_px,
    }
    with store.atomic_path(path) as tmp:
        group = store.create_group(tmp, attrs)
        store.write_array(group, "coords", coords)
    return path, len(coords)


# ----------------------------------------------------------------------------- (a)


def bench_reader(slide: Path, tiles: Path, workers: list[int], batch: int) -> dict:
    import openslide

    from ghanet_pipeline.slides.patch_reader import (
        grid_from_store,
        iterate_batches,
        read_patch_naive,
    )

    grid = grid_from_store(store.open_store(tiles), slide)
    n = len(grid)
    results = {}
    with openslide.OpenSlide(str(slide)) as handle:
        read_patch_naive(handle, grid, 0)
        t, c = time.perf_counter(), time.process_time()
        for i in range(n):
            read_patch_naive(handle, grid, i)
        results["naive"] = n / (time.perf_counter() - t)
        results["naive_cpu_ms"] = 1000 * (time.process_time() - c) / n
    for w in workers:
        t, c = time.perf_counter(), time.process_time()
        count = sum(len(b.ok) for b in iterate_batches(grid, batch, w))
        assert count == n
        results[f"block_w{w}"] = n / (time.perf_counter() - t)
        results[f"block_w{w}_cpu_ms"] = 1000 * (time.process_time() - c) / n
    return results


def reader_path(slide: Path) -> str:
    """Which path the block reader takes for level 0 of ``slide``: decoded JPEG tiles or OpenSlide."""
    import openslide

    from ghanet_pipeline.slides.patch_reader import select_tile_reader

    with openslide.OpenSlide(str(slide)) as handle:
        tiles = select_tile_reader(str(slide), handle, 0)
    if tiles is None:
        return "OpenSlide read_region"
    tiles.close()
    return "JPEG tiles (tiff_tiles)"


# ----------------------------------------------------------------------------- (b)


def bench_efficiency(slide: Path, tiles: Path, out_dir: Path, batch: int, workers: int, repeats: int) -> dict:
    import torch

    from ghanet_pipeline.features.encoders import build_encoder
    from ghanet_pipeline.features.extract import configure_threads, extract

    configure_threads()
    settings = stage_settings(
        "features", None,
        json.dumps({"encoder": "resnet50_trunc", "weights": "random", "batch_size": batch, "num_workers": workers,
                    "device": "cpu"}),
    )
    from ghanet_pipeline.features.encoder import CPU_MICRO_BATCH

    # the encoder as extract() runs it on a CPU: the frozen graph (features.cpu_graph), micro-batches
    enc = build_encoder("resnet50_trunc", "random").to("cpu", settings.precision, cpu_graph=settings.cpu_graph)

    def encode_only(t):
        for i in range(0, len(t), CPU_MICRO_BATCH):
            enc.forward_normalised(t[i : i + CPU_MICRO_BATCH])

    n = int(store.open_store(tiles)["coords"].shape[0])
    size = int(store.open_store(tiles).attrs["patch_size"])
    gen = torch.Generator().manual_seed(0)
    x = enc.preprocess(torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=gen))
    encode_only(x)  # warm-up (oneDNN primitives), shared by both measurements
    n_batches = (n + batch - 1) // batch
    last = enc.preprocess(torch.randint(0, 256, (n - (n_batches - 1) * batch, size, size, 3), dtype=torch.uint8))
    encode_only(last)
    e2e, only = [], []
    for r in range(repeats):
        t = time.perf_counter()
        for _ in range(n_batches - 1):
            encode_only(x)
        encode_only(last)
        only.append(n / (time.perf_counter() - t))
        out = out_dir / f"eff{r}.zarr"
        t = time.perf_counter()
        assert extract(tiles, slide, out, settings, encoder=enc) == "ok"
        e2e.append(n / (time.perf_counter() - t))
    return {"n": n, "batch": batch, "workers": workers, "patch_px": size, "encoder_only": only, "end_to_end": e2e,
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- (c)


def peak_rss(tiles: Path, slide: Path, out: Path, settings: dict) -> dict:
    """Run `ghanet features` in a subprocess; sample the RSS of it and its reader workers."""
    import psutil

    cmd = [sys.executable, "-m", "ghanet_pipeline", "features", "--tiles", str(tiles), "--slide-path", str(slide),
           "--out", str(out), "--settings", json.dumps(settings)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    main = psutil.Process(proc.pid)
    peak_main, peak_tree, peak_uss = 0, 0, 0
    stop = threading.Event()

    def sample():
        nonlocal peak_main, peak_tree, peak_uss
        while not stop.is_set():
            try:
                procs = [main] + main.children(recursive=True)
                rss = [p.memory_info().rss for p in procs]
                peak_main = max(peak_main, rss[0])
                peak_tree = max(peak_tree, sum(rss))
            except psutil.Error:
                pass
            stop.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"ghanet features failed:\n{err[-3000:]}")
    return {"seconds": time.perf_counter() - t, "peak_rss_main_mb": peak_main / 2**20,
            "peak_rss_tree_mb": peak_tree / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where slides are written (kept for reruns)")
    parser.add_argument("--quick", action="store_true", help="smaller figures (smoke run)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: a,b,c")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ghanet-bench-features-"))
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (results vary with load)")

    # A 0.5 um/px slide of 8192 x 8192 px: 1024 patches of 256 px.
    slide = make_slide(work / "bench_8k.svs", 8192, 8192)
    if "a" not in skip:
        tiles, n = write_tiles(work / "a_tiles.zarr", slide, 8192, 8192, 256, 256, limit=256 if args.quick else None)
        r = bench_reader(slide, tiles, [0, 1, 2], batch=64)
        print(f"\n(a) reader, {n} patches of 256 px at level 0 (block reader path: {reader_path(slide)}):")
        print(f"    one read_region per patch      {r['naive']:8.1f} patches/s   "
              f"({r['naive_cpu_ms']:.2f} CPU ms/patch)")
        for w in (0, 1, 2):
            cpu = f"({r[f'block_w{w}_cpu_ms']:.2f} CPU ms/patch)" if w == 0 else "(CPU in workers)"
            print(f"    block reader, {w} workers        {r[f'block_w{w}']:8.1f} patches/s   "
                  f"ratio {r[f'block_w{w}'] / r['naive']:.2f}x   {cpu}")
    if "b" not in skip:
        n_b = 64 if args.quick else 256
        tiles, n = write_tiles(work / "b_tiles.zarr", slide, 8192, 8192, 256, 224, limit=n_b)
        r = bench_efficiency(slide, tiles, work, batch=32, workers=2, repeats=1 if args.quick else 2)
        only, e2e = max(r["encoder_only"]), max(r["end_to_end"])
        print(f"\n(b) pipeline efficiency, resnet50_trunc (random weights), {r['n']} patches, 256 px read -> "
              f"{r['patch_px']} px, batch {r['batch']}, {r['workers']} reader workers, cpu fp32, "
              f"{r['threads']} torch threads:")
        print(f"    encoder only (pre-made tensors) {', '.join(f'{v:.2f}' for v in r['encoder_only'])} patches/s")
        print(f"    end to end (slide -> store)     {', '.join(f'{v:.2f}' for v in r['end_to_end'])} patches/s")
        print(f"    efficiency (best / best)        {e2e / only:.3f}   "
              f"(mean / mean {np.mean(r['end_to_end']) / np.mean(r['encoder_only']):.3f})")
    if "c" not in skip:
        sizes = [(3584, 3584), (7168, 7168)] if args.quick else [(7168, 7168), (14336, 14336)]
        print("\n(c) peak RSS of `ghanet features` (subprocess), 64 px patches read at level 0 -> 32 px, "
              "resnet50_trunc random, batch 256, 2 workers:")
        rows = []
        for w, h in sizes:
            big = make_slide(work / f"rss_{w}.svs", w, h, mpp=0.5)
            tiles, n = write_tiles(work / f"rss_{w}_tiles.zarr", big, w, h, 64, 32)
            r = peak_rss(tiles, big, work / f"rss_{w}_features.zarr",
                         {"encoder": "resnet50_trunc", "weights": "random", "batch_size": 256, "num_workers": 2})
            rows.append((n, r))
            print(f"    {n:6d} patches: main {r['peak_rss_main_mb']:7.1f} MB, main + workers "
                  f"{r['peak_rss_tree_mb']:7.1f} MB, {r['seconds']:.0f} s ({n / r['seconds']:.0f} patches/s)")
        (n1, r1), (n2, r2) = rows
        print(f"    {n2 / n1:.1f}x the patches -> {r2['peak_rss_main_mb'] / r1['peak_rss_main_mb']:.3f}x main RSS, "
              f"{r2['peak_rss_tree_mb'] / r1['peak_rss_tree_mb']:.3f}x tree RSS")
    print(f"\nwork folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
