"""Training speed: our epoch loop against a re-implementation of the reference loop's schedule,
side by side on the same generated cohort, same model weights at the start, same sampling.

    python benchmarks/train.py                                # 64 patients x 4000 patches, 1 thread
    python benchmarks/train.py --patients 16 --patches 1000 --epochs 1

The reference schedule (the authors' release, MCAT-style ``train_loop_survival``): one patient
per step, the loss divided by 32 and the optimiser stepped every 32 patients, ``.item()`` of the
loss and of the risk after every step (the train c-index comes from those training-pass risks),
then predictions on the validation fold only. Its model computes the second cross-attention
round by calling the round-1 module again (keys/values projected twice), as the release does;
ours (``attention_mode: faithful``) reuses them (ghanet_pipeline.model). The reference model
also has none of our model-level optimisations: its dropout layers are plain ``nn.Dropout``
(``bernoulli_`` masks), where ours draw a cheaper mask on the CPU
(ghanet_pipeline.model.dropout). Our loop: the same steps, loss sums kept on the device,
validation predictions, and train-set statistics once at the end of the run (reported apart,
and amortised over ``--run-epochs``).

The process keeps freed memory for reuse (``retain_freed_memory``, as the ``ghanet`` CLI does at
start), for both loops alike.

Prints s/epoch of each loop and the ratio reference / ours, in fp32 (our default on CPU) and
with the opt-in bf16 autocast (``train.precision: bf16``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
import types
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from ghanet_pipeline.config import section_from_json
from ghanet_pipeline.model import build_model, model_config
from ghanet_pipeline.model.dropout import FastDropout
from ghanet_pipeline.model.losses import nll_survival_loss, reconstruction_loss
from ghanet_pipeline.runtime.devices import resolve_device
from ghanet_pipeline.runtime.memory import retain_freed_memory
from ghanet_pipeline.survival.metrics import concordance_index, risk_from_survival
from ghanet_pipeline.training.train import (
    Patient,
    autocast_for,
    balanced_order,
    cindex_of,
    epoch_rng,
    evaluate,
    predict,
    train_epoch,
)

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


def synthetic_cohort(n_patients: int, n_patches: int, dim: int, seed: int = 0):
    """Bags whose mean carries a little survival signal, so c-indices are not pure noise."""
    rng = np.random.default_rng(seed)
    targets_rng = torch.Generator().manual_seed(seed)  # the same reconstruction targets in every run
    direction = rng.standard_normal(dim).astype(np.float32)
    patients, bags = [], {}
    for i in range(n_patients):
        case_id = f"P{i:04d}"
        b, c = int(rng.integers(4)), int(rng.integers(2))
        months = float(rng.uniform(b * 25, (b + 1) * 25))
        bag = rng.standard_normal((n_patches, dim), dtype=np.float32) + 0.05 * (1.5 - b) * direction
        bags[case_id] = bag.astype(np.float16)
        patients.append(Patient(case_id, months, c, b, 2 * b + c, None, [torch.randn(k, generator=targets_rng) for k in PAPER_K]))
    n_val = max(2, n_patients // 5)
    return patients[n_val:], patients[:n_val], InMemoryBags(bags)


def release_associate(self, h: torch.Tensor):
    """The release's CAB trunk: the round-1 module called twice, projecting the context twice."""
    context = self.norm_context(h)
    r, _ = self.cross_attn_1(self.norm_q1(self.tokens), context)
    r = self.ff1(self.norm_ff1(r)) + r
    r, logits = self.cross_attn_1(self.norm_q2(self.tokens + r), context)
    r = self.ff2(self.norm_ff2(r)) + r
    return self.norm_recon(r), logits.mean(dim=0)


def release_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` as the release computes it: K/V projected twice, plain ``nn.Dropout``."""
    ref = copy.deepcopy(model)
    ref.associate = types.MethodType(release_associate, ref)
    for parent in list(ref.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FastDropout):
                setattr(parent, name, nn.Dropout(child.p, child.inplace))
    return ref


def reference_epoch(model, optimizer, train, val, bags, settings, epoch, device, autocast) -> dict:
    """One epoch of the reference schedule (see the module docstring)."""
    model.train()
    order = balanced_order([p.label for p in train], epoch_rng(settings.seed, epoch))
    risks, losses = np.zeros(len(order)), []
    for step, index in enumerate(order):
        patient = train[index]
        x = bags.get(patient.case_id).to(device)
        with autocast():
            out = model(x)
        nll = nll_survival_loss(out["hazards"], patient.bin, patient.censorship)
        loss = nll + 0.3 * reconstruction_loss(out["recon"], patient.targets)
        # a host sync per step, as the reference's .item() (what this loop measures)
        risks[step] = float(risk_from_survival(out["S"].detach().float().cpu().numpy().reshape(-1)))
        losses.append(loss.item())
        (loss / settings.grad_accum).backward()
        if (step + 1) % settings.grad_accum == 0:
            optimizer.step()
            optimizer.zero_grad()
    c_train = concordance_index(risks, [train[i].survival_months for i in order], [train[i].censorship for i in order])
    model.eval()  # validation: predictions on the validation fold only
    val_risk = []
    with torch.no_grad():
        for patient in val:
            with autocast():
                out = model(bags.get(patient.case_id).to(device))
            val_risk.append(float(risk_from_survival(out["S"].float().cpu().numpy().reshape(-1))))
    c_val = concordance_index(np.array(val_risk), [p.survival_months for p in val], [p.censorship for p in val])
    return {"loss": float(np.mean(losses)), "train_cindex": c_train, "val_cindex": c_val}


def our_epoch(model, optimizer, train, val, bags, settings, epoch, device) -> dict:
    losses = train_epoch(model, optimizer, train, bags, settings, 0.3, epoch, device)
    s_val, _ = evaluate(model, val, bags, device, settings.precision)
    return {**losses, "val_cindex": cindex_of(val, s_val)}


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def run(args, precisions: list[str], train, val, bags, device) -> dict:
    """Each loop from the same initial weights; epochs interleaved so machine load hits all alike."""
    base = {"epochs": args.epochs, "device": str(device), "attention_mode": "faithful"}
    settings = {p: section_from_json("train", json.dumps({**base, "precision": p})) for p in precisions}
    torch.manual_seed(1)
    config = model_config("ghanet", feature_dim=args.dim, group_sizes=PAPER_K, attention_mode="faithful")
    init = build_model("ghanet", config).to(device)
    models = {p: copy.deepcopy(init) for p in precisions}
    ref = release_model(init)

    def adam(model):
        s = settings[precisions[0]]
        return torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)

    optimizers = {p: adam(m) for p, m in models.items()}
    opt_ref = adam(ref)
    # the authors' loop: bf16 autocast on CUDA (as our auto), none on CPU
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    for model, cast in [*((models[p], lambda p=p: autocast_for(device, p)) for p in precisions), (ref, autocast)]:
        warm = copy.deepcopy(model)  # first calls allocate and pick kernels: not timed
        with cast():
            out = warm(bags.get(train[0].case_id).to(device))
        nll_survival_loss(out["hazards"], 0, 0).backward()
    times: dict[str, list[float]] = {p: [] for p in [*precisions, "reference"]}
    results: dict[str, dict] = {}
    for epoch in range(1, args.epochs + 1):
        for p in precisions:
            dt, results[p] = timed(our_epoch, models[p], optimizers[p], train, val, bags, settings[p], epoch, device)
            times[p].append(dt)
        dt, results["reference"] = timed(reference_epoch, ref, opt_ref, train, val, bags, settings[precisions[0]],
                                         epoch, device, autocast)
        times["reference"].append(dt)
        logging.info("epoch %d: %s", epoch, ", ".join(
            f"{k} {v[-1]:.1f} s (val c {results[k]['val_cindex']:.3f})" for k, v in times.items()))
    ref_s = float(np.median(times["reference"]))
    out = {"reference_s_per_epoch": ref_s, "reference_val_cindex": results["reference"]["val_cindex"]}
    for p in precisions:
        t_end, _ = timed(lambda: np.median(risk_from_survival(predict(models[p], train, bags, device, p))))
        ours_s = float(np.median(times[p]))
        amortised = ours_s + t_end / args.run_epochs
        out[p] = {"ours_s_per_epoch": ours_s, "end_of_run_train_stats_s": t_end,
                  "ratio": ref_s / ours_s, "ratio_amortised": ref_s / amortised,
                  "val_cindex": results[p]["val_cindex"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--patches", type=int, default=4000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed per loop (median reported)")
    parser.add_argument("--run-epochs", type=int, default=20, help="epochs of a real run, to amortise the end")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device, "--device")
    train, val, bags = synthetic_cohort(args.patients, args.patches, args.dim)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s); {len(train)} training + "
          f"{len(val)} validation patients x {args.patches} patches x {args.dim}-d; G-HANet faithful")
    precisions = args.precisions.split(",")
    r = run(args, precisions, train, val, bags, device)
    print(f"reference loop (fp32{' + bf16 autocast' if device.type == 'cuda' else ''}): "
          f"{r['reference_s_per_epoch']:.2f} s/epoch, val c-index {r['reference_val_cindex']:.3f}")
    for p in precisions:
        o = r[p]
        print(f"ours {p}: {o['ours_s_per_epoch']:.2f} s/epoch -> {o['ratio']:.2f}x the reference; with the "
              f"end-of-run train statistics ({o['end_of_run_train_stats_s']:.1f} s) amortised over "
              f"{args.run_epochs} epochs {o['ratio_amortised']:.2f}x; val c-index {o['val_cindex']:.3f}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
