"""Heatmap output and slide-only inference speed on CPU (prints numbers; not a test).

    python benchmarks/bench_heatmaps.py [--patches 20000] [--dim 1024]

A gigapixel-sized grid (level-0 100k x 80k px, 512 px patches) with N patches: time to draw the
PNG overlays (7 panels), write the Zarr arrays and the GeoJSON, and one fold's forward pass of
a full-size G-HANet (hidden 512) over the bag.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ghanet_pipeline.inference import heatmaps
from ghanet_pipeline.model import build_model, model_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patches", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=1024)
    args = parser.parse_args()
    n, size, patch = args.patches, (100_000, 80_000), 512
    cols = size[0] // patch
    idx = np.arange(n)
    coords = np.stack([(idx % cols) * patch, (idx // cols) * patch], axis=1).astype(np.int64)

    model = build_model("ghanet", model_config("ghanet", feature_dim=args.dim, group_sizes=[10, 30, 48, 51, 188, 37])).eval()
    bag = torch.randn(n, args.dim)
    with torch.inference_mode():
        model(bag[:64], return_attention=True)
        t = time.perf_counter()
        out = model(bag, return_attention=True)
        forward = time.perf_counter() - t
    data = heatmaps.SlideAttention(
        slide_id="bench", case_id="bench", coords=coords, morphology=out["morphology"].numpy(),
        association=out["association"].numpy(), group_names=tuple(f"family {i}" for i in range(6)),
        patch_size_level0=patch, level0_size=size)
    thumb = heatmaps.thumbnail(None, size)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        png = heatmaps.overlay_png(data, thumb)
        overlay = time.perf_counter() - t
        t = time.perf_counter()
        heatmaps.write_zarr(Path(tmp) / "b.zarr", data)
        zarr_s = time.perf_counter() - t
        t = time.perf_counter()
        heatmaps.write_geojson(Path(tmp) / "b.geojson", data)
        geo = time.perf_counter() - t
        geo_mb = (Path(tmp) / "b.geojson").stat().st_size / 1e6
    print(f"N = {n} patches, D = {args.dim}, torch threads = {torch.get_num_threads()}")
    print(f"forward (one fold, full-size G-HANet): {forward:.2f} s  ({n / forward:.0f} patches/s)")
    print(f"overlay PNG (7 panels): {overlay:.2f} s, {len(png) / 1e3:.0f} kB")
    print(f"zarr arrays: {zarr_s:.2f} s;  GeoJSON: {geo:.2f} s, {geo_mb:.1f} MB ({geo_mb * 1e6 / n:.0f} B/patch)")
    print(f"heatmap outputs / forward time ratio: {(overlay + zarr_s + geo) / forward:.2f}")


if __name__ == "__main__":
    main()
