"""Throughput and peak memory of the streaming Aperio SVS writer (ghanet_pipeline.slides.synthetic).

    python benchmarks/synthetic_write.py [--width 60000 --height 45000] [--workers 1]

Prints seconds, megapixels per second, file size and peak resident memory; the ratio of
peak memory to the raw level-0 size shows the writer streams (it must stay far below 1).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from ghanet_pipeline.slides import synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=60000)
    parser.add_argument("--height", type=int, default=45000)
    parser.add_argument("--workers", type=int, default=1, help="tifffile JPEG encoding threads")
    parser.add_argument("--out", default=None, help="output .svs (default: a temporary file, removed)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 40, size=(256, 256, 1), dtype=np.uint8)

    def tile_fn(x0: int, y0: int, w: int, h: int) -> np.ndarray:
        colour = np.array([200 + (x0 // 256) % 40, 120 + (y0 // 256) % 80, 180], np.uint8)
        return (colour - texture[:h, :w]).astype(np.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.out) if args.out else Path(tmp) / "bench.svs"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        sizes = synthetic.write_aperio_svs(path, args.width, args.height, tile_fn, mpp=0.25, app_mag=40,
                                           levels=None, maxworkers=args.workers)
        seconds = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        raw_mb = args.width * args.height * 3 / 1e6
        print(f"levels {sizes}")
        print(f"wrote {args.width}x{args.height} in {seconds:.1f} s: {args.width * args.height / 1e6 / seconds:.1f} Mpx/s, "
              f"file {path.stat().st_size / 1e6:.0f} MB")
        print(f"peak RSS {peak_mb:.0f} MB (before {before / 1024:.0f} MB); raw level 0 {raw_mb:.0f} MB; "
              f"ratio peak/raw {peak_mb / raw_mb:.3f}")


if __name__ == "__main__":
    main()
