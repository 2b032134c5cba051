"""Amortised feature jobs: one `ghanet features` process per slide against one per shard of
slides, side by side on the same generated cohort (>= 100 small slides by default).

    python benchmarks/features_shards.py                          # 100 slides: 1, 20 and auto
    python benchmarks/features_shards.py --slides 20 --shard-sizes 1,5 --side 768

A shard size is a number of slides per job or ``auto`` (config.yaml's default: shards of about
``features.shard_megabytes`` of slide files, planned by ``ghanet_pipeline.features.shards`` as
the workflow plans them).

Each job is a real subprocess (`python -m ghanet_pipeline features ...`, as Snakemake runs it),
run one at a time with OMP_NUM_THREADS=1, so wall and CPU seconds are those of the stage on one
core. The fixed cost of a job (interpreter start, imports, encoder build, lock and store
handling: what does not grow with the slides) is what the extra jobs of the first shard size
cost: (T_1 - T_k) / (jobs_1 - jobs_k), in wall and in CPU seconds (CPU is the steadier figure on
a loaded machine). Prints, per shard size: wall and CPU s per slide, and the fixed cost's share.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ghanet_pipeline.features.shards import AUTO, plan_shards  # noqa: E402
from ghanet_pipeline.io import store  # noqa: E402
from ghanet_pipeline.slides import synthetic

log = logging.getLogger("bench.features_shards")


def tissue_tile(seed: int):
    """A tile function: pink 'tissue' texture, different per slide."""
    def fn(x0: int, y0: int, w: int, h: int) -> np.ndarray:
        rng = np.random.default_rng([seed, x0, y0])
        base = np.array([200, 120, 170], dtype=np.int16)
        noise = rng.integers(-40, 40, size=(h, w, 3), dtype=np.int16)
        return np.clip(base + noise, 0, 255).astype(np.uint8)
    return fn


def make_cohort(root: Path, n: int, side: int, patch: int) -> list[tuple[Path, Path]]:
    """n slides of side x side px at 0.5 um/px and a tiles store each (the full grid of patches)."""
    pairs = []
    xs = np.arange(0, side - patch + 1, patch)
    coords = np.array([(x, y) for y in xs for x in xs], dtype=np.int64)
    for i in range(n):
        slide = root / "slides" / f"B{i:04d}.svs"
        slide.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_aperio_svs(slide, side, side, tissue_tile(i), levels=1)
        tiles = root / "tiles" / f"B{i:04d}.zarr"
        attrs = {"ghanet_store": "tiles", "status": "ok", "reason": "", "slide_id": slide.stem,
                 "source_path": str(slide), "target_mpp": 0.5, "effective_mpp": 0.5, "read_level": 0,
                 "read_downsample": 1.0, "patch_size": patch, "patch_size_read": patch,
                 "patch_size_level0": patch, "step_level0": patch}
        with store.atomic_path(tiles) as tmp:
            group = store.create_group(tmp, attrs)
            store.write_array(group, "coords", coords)
        pairs.append((tiles, slide))
    return pairs


def run_jobs(pairs, out_dir: Path, shard_size: int | str, settings: dict, graph_cache: Path | None) -> dict:
    """Every slide through the jobs of ``shard_size`` (as the workflow plans them), one job at a time.

    ``graph_cache``: the frozen-encoder-graph cache every job shares (warm); None: each job
    starts with an empty one and traces the encoder itself (the cost before the cache existed).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    by_slide = {slide.stem: (tiles, slide) for tiles, slide in pairs}
    plan = plan_shards(list(by_slide), [slide for _, slide in pairs], shard_size, None, settings["device"])
    jobs = 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t_start = time.perf_counter()
    for names in plan:
        shard = [by_slide[name] for name in names]
        outs = [out_dir / t.name for t, _ in shard]
        cmd = [sys.executable, "-m", "ghanet_pipeline", "features", "--tiles", *[str(t) for t, _ in shard],
               "--slide-path", *[str(s) for _, s in shard], "--out", *map(str, outs),
               "--settings", json.dumps(settings)]
        cache = graph_cache if graph_cache is not None else out_dir / f".graph-cache-{jobs}"
        proc = subprocess.run(cmd, env={**env, "GHANET_CACHE_DIR": str(cache)}, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"job failed ({proc.returncode}): {proc.stderr[-2000:]}")
        jobs += 1
    wall = time.perf_counter() - t_start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    n = len(pairs)
    return {"shard_size": shard_size, "jobs": jobs, "slides": n, "wall_s": wall, "cpu_s": cpu,
            "wall_s_per_slide": wall / n, "cpu_s_per_slide": cpu / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=100)
    parser.add_argument("--side", type=int, default=1024, help="slide side in px (0.5 um/px)")
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--shard-sizes", default="1,20,auto", help="slides per job, or auto")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--sample-single", type=int, default=None,
                        help="run the one-job-per-slide side on the first N slides only (per-slide figures "
                             "are per slide either way); default: all")
    parser.add_argument("--workdir", help="keep the cohort and stores here (default: a temporary folder)")
    parser.add_argument("--cold-graph-cache", action="store_true",
                        help="every job traces the encoder (an empty graph cache per job), as before the cache")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = {"encoder": args.encoder, "weights": "default" if args.encoder == "efficientnet_lite0" else "random",
                "batch_size": 64, "num_workers": 0, "device": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        pairs = make_cohort(root, args.slides, args.side, args.patch)
        per_slide = (args.side // args.patch) ** 2
        print(f"{args.slides} generated slides of {args.side}x{args.side} px, {per_slide} patches each "
              f"({time.perf_counter() - t0:.0f} s to write); encoder {args.encoder} on 1 CPU thread")
        graph_cache = None if args.cold_graph_cache else root / "graph-cache"
        if graph_cache is not None:  # the first job on a machine traces and saves the graph: not timed
            t0 = time.perf_counter()
            run_jobs(pairs[:1], root / "features_warmup", 1, settings, graph_cache)
            print(f"graph cache warmed by one job ({time.perf_counter() - t0:.1f} s, untimed); every timed job loads it")
        results = []
        for k in [v if v == AUTO else int(v) for v in args.shard_sizes.split(",")]:
            subset = pairs[: args.sample_single] if k == 1 and args.sample_single else pairs
            r = run_jobs(subset, root / f"features_k{k}", k, settings, graph_cache)
            results.append(r)
            print(f"slides_per_job {k!s:>4}: {r['jobs']:>4} jobs, wall {r['wall_s']:.0f} s = "
                  f"{r['wall_s_per_slide']:.2f} s/slide, CPU {r['cpu_s']:.0f} s = {r['cpu_s_per_slide']:.2f} s/slide",
                  flush=True)
        first = results[0]
        for r in results[1:]:
            # per slide: s1 = F / 1 + v and sk = F / k + v (v: encoding one slide) -> F = (s1 - sk) / (1 - 1/k)
            k1, kk = first["slides"] / first["jobs"], r["slides"] / r["jobs"]
            if kk <= k1:
                continue
            scale = 1 / k1 - 1 / kk
            fixed_wall = (first["wall_s_per_slide"] - r["wall_s_per_slide"]) / scale
            fixed_cpu = (first["cpu_s_per_slide"] - r["cpu_s_per_slide"]) / scale
            r.update(fixed_wall_s_per_job=fixed_wall, fixed_cpu_s_per_job=fixed_cpu)
            print(f"fixed cost per job: {fixed_wall:.2f} s wall, {fixed_cpu:.2f} s CPU; its share of the stage: "
                  f"{100 * fixed_cpu / k1 / first['cpu_s_per_slide']:.0f} % (CPU) with {k1:.0f} slide(s) per job vs "
                  f"{100 * fixed_cpu / kk / r['cpu_s_per_slide']:.0f} % with {r['shard_size']}; per slide, shards are "
                  f"{first['wall_s_per_slide'] / r['wall_s_per_slide']:.2f}x faster (wall), "
                  f"{first['cpu_s_per_slide'] / r['cpu_s_per_slide']:.2f}x (CPU)")
        print(json.dumps(results))


if __name__ == "__main__":
    main()
