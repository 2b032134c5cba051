"""Training speed of G-HANet: seconds per epoch and peak memory for a synthetic in-memory
cohort, and forward+backward time against bag size (should grow about linearly).

    python benchmarks/train.py                       # 100 patients x 5000 patches x 1024-d
    python benchmarks/train.py --patients 20 --bag-sizes 1000,10000 --threads 2

Prints one line per measurement; on CUDA it also reports peak GPU memory (bf16 autocast).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from ghanet_pipeline.config import section_from_json
from ghanet_pipeline.model import build_model, count_parameters, model_config
from ghanet_pipeline.model.losses import nll_survival_loss, reconstruction_loss
from ghanet_pipeline.train import Patient, pick_device, predict, train_epoch

PAPER_K = [10, 30, 48, 51, 188, 37]


class InMemoryBags:
    """The cohort's bags held in RAM as float16 (what BagSource caches for float16 stores)."""

    def __init__(self, bags: dict[str, np.ndarray]) -> None:
        self.bags = bags

    def n_patches(self, case_id: str) -> int:
        return len(self.bags[case_id])

    def get(self, case_id: str, rows=None) -> torch.Tensor:
        bag = self.bags[case_id] if rows is None else self.bags[case_id][rows]
        return torch.from_numpy(bag.astype(np.float32))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def synthetic_cohort(n_patients: int, n_patches: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    patients, bags = [], {}
    for i in range(n_patients):
        case_id = f"P{i:04d}"
        bags[case_id] = rng.standard_normal((n_patches, dim), dtype=np.float32).astype(np.float16)
        b, c = int(rng.integers(4)), int(rng.integers(2))
        patients.append(Patient(case_id, float(rng.uniform(1, 100)), c, b, 2 * b + c, None,
                                [torch.randn(k) for k in PAPER_K]))
    return patients, InMemoryBags(bags)


def bench_epoch(args, device: torch.device) -> None:
    patients, bags = synthetic_cohort(args.patients, args.patches, args.dim)
    print(f"cohort: {args.patients} patients x {args.patches} patches x {args.dim}-d float16 in memory "
          f"({args.patients * args.patches * args.dim * 2 / 1e9:.2f} GB); peak RSS so far {peak_rss_gb():.2f} GB")
    settings = section_from_json("train", json.dumps({"epochs": 1, "device": str(device)}))
    torch.manual_seed(1)
    model = build_model("ghanet", model_config("ghanet", feature_dim=args.dim, group_sizes=PAPER_K)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train_epoch(model, optimizer, patients, bags, settings, 0.3, 1, device)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict(model, patients, bags, device)
    t_eval = time.perf_counter() - t0
    gpu = f", peak GPU {torch.cuda.max_memory_allocated() / 1e9:.2f} GB" if device.type == "cuda" else ""
    print(f"epoch ({device}): train {t_train:.1f} s ({t_train / args.patients * 1e3:.0f} ms/patient), "
          f"one eval pass {t_eval:.1f} s ({t_eval / args.patients * 1e3:.0f} ms/patient), "
          f"epoch with train+val eval ~{t_train + t_eval:.1f} s; peak RSS {peak_rss_gb():.2f} GB{gpu}")


def bench_bag_sizes(args, device: torch.device) -> None:
    torch.manual_seed(1)
    model = build_model("ghanet", model_config("ghanet", feature_dim=args.dim, group_sizes=PAPER_K)).to(device)
    model.train()
    print(f"G-HANet clean, {count_parameters(model) / 1e6:.2f} M parameters, D = {args.dim}")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    targets = [torch.randn(k, device=device) for k in PAPER_K]
    times = {}
    for n in args.bag_sizes:
        x = torch.randn(n, args.dim, device=device)
        best = float("inf")
        for _ in range(args.repeats + 1):  # the first call warms up
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            with autocast:
                out = model(x)
            loss = nll_survival_loss(out["hazards"], 1, 0) + 0.3 * reconstruction_loss(out["recon"], targets)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        times[n] = best
        gpu = f", peak GPU {torch.cuda.max_memory_allocated() / 1e9:.2f} GB" if device.type == "cuda" else ""
        print(f"bag {n:>7} patches: forward+backward {best * 1e3:9.1f} ms ({best / n * 1e6:.2f} us/patch), "
              f"peak RSS {peak_rss_gb():.2f} GB{gpu}")
    sizes = sorted(times)
    for small, large in zip(sizes[:-1], sizes[1:]):
        print(f"  {large}/{small} patches = {large / small:.0f}x size -> {times[large] / times[small]:.1f}x time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--patches", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--bag-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1000, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-epoch", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    if not args.skip_epoch:  # first, so its peak RSS is its own
        bench_epoch(args, device)
    bench_bag_sizes(args, device)


if __name__ == "__main__":
    main()
