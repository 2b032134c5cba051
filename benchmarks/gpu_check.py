"""The GPU path, measured (run through benchmarks/gpu_check.sh; see there).

Steps: (1) a generated gigapixel Aperio slide (synthetic.write_aperio_svs) and a tiles store of
its full patch grid; (2) without a CUDA GPU: a clear message and exit 2; (3) per encoder
(efficientnet_lite0, resnet50_trunc; random weights, bf16 autocast): end-to-end patches/s from
the raw slide to the Zarr store (features.extract), GPU utilisation sampled by nvidia-smi every
200 ms during the run, peak GPU memory; (4) the fixed cost of a features job: a real
`python -m ghanet_pipeline features` process, from its start to its first encoded batch;
(5) training seconds per epoch, 100 synthetic patients x 10k patches (benchmarks/train.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ghanet_pipeline.io import store  # noqa: E402
from ghanet_pipeline.slides import synthetic

ENCODERS = ("efficientnet_lite0", "resnet50_trunc")


def say(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_slide(root: Path, side: int, patch: int, workers: int) -> tuple[Path, Path, int]:
    """A side x side px slide (0.5 um/px) of tissue-like tiles, and a tiles store of its full grid."""
    rng = np.random.default_rng(0)
    bank = [np.clip(np.array([200, 120, 170]) + rng.integers(-50, 50, size=(256, 256, 3)), 0, 255).astype(np.uint8)
            for _ in range(16)]

    def tile_fn(x0: int, y0: int, w: int, h: int) -> np.ndarray:
        t = bank[(x0 // 256 * 7 + y0 // 256) % len(bank)]
        return np.ascontiguousarray(np.tile(t, (h // 256 + 1, w // 256 + 1, 1))[:h, :w])

    slide = root / "giga.svs"
    t0 = time.perf_counter()
    synthetic.write_aperio_svs(slide, side, side, tile_fn, levels=3, maxworkers=workers)
    xs = np.arange(0, side - patch + 1, patch)
    coords = np.array([(x, y) for y in xs for x in xs], dtype=np.int64)
    tiles = root / "tiles" / "giga.zarr"
    attrs = {"ghanet_store": "tiles", "status": "ok", "reason": "", "slide_id": "giga", "source_path": str(slide),
             "target_mpp": 0.5, "effective_mpp": 0.5, "read_level": 0, "read_downsample": 1.0, "patch_size": patch,
             "patch_size_read": patch, "patch_size_level0": patch, "step_level0": patch}
    with store.atomic_path(tiles) as tmp:
        group = store.create_group(tmp, attrs)
        store.write_array(group, "coords", coords)
    say(f"slide {side} x {side} px ({side * side / 1e9:.2f} Gpx, {slide.stat().st_size / 1e9:.2f} GB), "
        f"{len(coords)} patches of {patch} px: written in {time.perf_counter() - t0:.0f} s")
    return slide, tiles, len(coords)


class Utilisation:
    """nvidia-smi sampling GPU utilisation every 200 ms into a file, read back per time window."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.out = open(path, "w")
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "200"], stdout=self.out, stderr=subprocess.DEVNULL)

    def window(self, start: float, end: float) -> str:
        if self.proc is None:
            return "n/a (no nvidia-smi)"
        self.out.flush()
        values = []
        for line in self.path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 2:
                continue
            with contextlib.suppress(ValueError):
                t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                if start <= t <= end:
                    values.append(float(parts[1]))
        if not values:
            return "n/a (no samples)"
        return f"mean {np.mean(values):.0f} %, median {np.median(values):.0f} %, max {max(values):.0f} % ({len(values)} samples)"

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.out.close()


def features_settings(encoder: str, batch: int, workers: int, device: str = "cuda"):
    from ghanet_pipeline.config import stage_settings

    return stage_settings("features", None, json.dumps({
        "encoder": encoder, "weights": "random", "precision": "bf16", "device": device, "batch_size": batch,
        "num_workers": workers, "dtype": "float16"}))


def end_to_end(encoder: str, slide: Path, tiles: Path, n: int, root: Path, util: Utilisation, batch: int,
               workers: int) -> dict:
    import torch

    from ghanet_pipeline.features.encoders import build_encoder
    from ghanet_pipeline.features.extract import extract

    settings = features_settings(encoder, batch, workers)
    enc = build_encoder(encoder, "random", False).to(torch.device("cuda"), "bf16")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = root / "features" / encoder / "giga.zarr"
    start = time.time()
    t0 = time.perf_counter()
    status = extract(tiles, slide, out, settings, encoder=enc)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 1e9
    result = {"encoder": encoder, "status": status, "patches": n, "seconds": seconds, "patches_per_s": n / seconds,
              "peak_gpu_gb": peak, "gpu_utilisation": util.window(start, time.time())}
    say(f"{encoder}: {n} patches raw slide -> Zarr in {seconds:.1f} s = {n / seconds:.0f} patches/s (bf16, batch "
        f"{batch}, {workers} readers); peak GPU memory {peak:.2f} GB; GPU utilisation {result['gpu_utilisation']}")
    shutil.rmtree(out, ignore_errors=True)
    del enc
    torch.cuda.empty_cache()
    return result


def fixed_cost(encoder: str, slide: Path, tiles: Path, root: Path, batch: int, workers: int) -> float:
    """Seconds from the start of a real features process to its first encoded batch."""
    out = root / "fixed" / encoder / "giga.zarr"
    cmd = [sys.executable, "-m", "ghanet_pipeline", "features", "-v", "--tiles", str(tiles), "--slide-path",
           str(slide), "--out", str(out), "--settings", json.dumps({
               "encoder": encoder, "weights": "random", "precision": "bf16", "device": "cuda",
               "batch_size": batch, "num_workers": workers})]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO)
    first = None
    with contextlib.suppress(Exception):
        for line in proc.stderr:
            if "batch 1/" in line:
                first = time.perf_counter() - t0
                break
    proc.kill()
    proc.wait()
    shutil.rmtree(out.parent, ignore_errors=True)
    if first is None:
        say(f"{encoder}: fixed cost not measured (no 'batch 1/' line; exit {proc.returncode})")
        return float("nan")
    say(f"{encoder}: fixed cost of a features job (process start -> first batch encoded): {first:.1f} s")
    return first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a 2048 px slide and 4 x 1000 training patches: a smoke test")
    parser.add_argument("--side", type=int, default=40960, help="slide side in px (default: 1.68 gigapixels)")
    parser.add_argument("--workdir", help="default: a temporary folder")
    args = parser.parse_args()
    side = 2048 if args.tiny else args.side
    cpus = len(os.sched_getaffinity(0))
    workers = max(1, min(12, cpus - 2))
    batch = 256
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        slide, tiles, n = make_slide(root, side, 256, max(1, cpus))
        import torch

        if not torch.cuda.is_available():
            say(f"no CUDA GPU here (torch {torch.__version__}, CUDA available: False): the CPU-side setup ran "
                f"({time.perf_counter() - started:.0f} s); nothing measured on a GPU. Run this on a machine with one.")
            return 2
        say(f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {cpus} CPUs")
        util = Utilisation(root / "utilisation.csv")
        results = {}
        try:
            for encoder in ENCODERS:
                results[encoder] = end_to_end(encoder, slide, tiles, n, root, util, batch, workers)
            for encoder in ENCODERS:
                results[encoder]["fixed_cost_s"] = fixed_cost(encoder, slide, tiles, root, batch, workers)
        finally:
            util.close()
        say("training, 100 synthetic patients x 10k patches x 1024-d (ours with bf16 autocast vs the reference "
            "schedule), 1 epoch each:")
        patients, patches = (4, 1000) if args.tiny else (100, 10000)
        train = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train.py"), "--device", "cuda",
                                "--patients", str(patients), "--patches", str(patches), "--epochs", "1",
                                "--precisions", "auto", "--threads", str(min(8, cpus))],
                               cwd=REPO, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        for line in train.stdout.splitlines():
            if not line.startswith("{"):
                say(f"  {line}")
        if train.returncode != 0:
            say(f"training benchmark failed: {train.stderr[-2000:]}")
        print(json.dumps({"encoders": results, "seconds": time.perf_counter() - started}))
        say(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
