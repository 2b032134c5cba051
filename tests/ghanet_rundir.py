"""A tiny but real run folder for the infer and report tests (no workflow needed).

Feature stores, tiles stores and status records follow docs/contracts.md; the fold checkpoints
hold a freshly initialised small G-HANet built by the model package's own factory, saved in the
checkpoint format of the train stage. The slide pixels come from the real CMU-1-Small-Region.svs
shipped in tests/data/slides/, copied once per slide id into the run folder (a sample sheet may
not name one file under two slide ids).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ghanet_pipeline.io.store import atomic_path, create_group, write_array, write_json
from ghanet_pipeline.survival.metrics import risk_from_survival

REAL_SLIDE = Path(__file__).resolve().parent / "data" / "slides" / "CMU-1-Small-Region.svs"
REAL_SIZE = (2220, 2967)
ENCODER = "tiny_test_encoder"
DIM = 16
PATCH = 256
GROUPS = ("Tumor Suppressor Genes", "Oncogenes", "Cytokines")
EVIL_CASE = "=cmd|' /C calc'!A0"
HTML_CASE = "<script>alert('x')</script>"
FAILED_REASON = "no tissue found <b>at all</b> & nothing to tile"


@dataclass
class RunDir:
    root: Path
    samples_csv: Path
    features_dir: Path
    models_dir: Path
    slides: pd.DataFrame
    fold_risks: dict[int, dict[str, float]] = field(default_factory=dict)  # fold -> case -> risk
    medians: dict[int, float] = field(default_factory=dict)


def grid(step: int, size: tuple[int, int], limit: int) -> np.ndarray:
    xs = np.arange(0, size[0] - PATCH + 1, step)
    ys = np.arange(0, size[1] - PATCH + 1, step)
    coords = np.array([(x, y) for y in ys for x in xs], dtype=np.int64)  # row-major: y then x
    return coords[:limit]


def write_slide_stores(root: Path, slide_id: str, n: int, rng: np.random.Generator, ok: bool = True,
                       encoder: str = ENCODER, dim: int = DIM, slide_path: Path = REAL_SLIDE) -> None:
    coords = grid(PATCH, REAL_SIZE, n) if ok else np.zeros((0, 2), np.int64)
    tiles = root / "tiles" / f"{slide_id}.zarr"
    with atomic_path(tiles) as tmp:
        group = create_group(tmp, {"ghanet_store": "tiles", "status": "ok" if ok else "failed",
                                   "reason": "" if ok else FAILED_REASON, "slide_id": slide_id,
                                   "level0_size": list(REAL_SIZE), "patch_size_level0": PATCH, "mpp": 0.499})
        write_array(group, "coords", coords)
    store = root / "features" / encoder / f"{slide_id}.zarr"
    with atomic_path(store) as tmp:
        group = create_group(tmp, {"ghanet_store": "features", "status": "ok" if ok else "failed",
                                   "reason": "" if ok else FAILED_REASON, "slide_id": slide_id, "encoder": encoder,
                                   "dim": dim, "weights": "random", "weights_sha256": "0" * 64, "dtype": "float16",
                                   "patch_size": PATCH, "target_mpp": 0.5, "effective_mpp": 0.499,
                                   "tiles_store": str(tiles), "n_bad_patches": 0})
        write_array(group, "features", rng.normal(size=(len(coords), dim)).astype(np.float16))
        write_array(group, "coords", coords)
    write_json(root / "status" / f"{slide_id}.json", {
        "slide_id": slide_id, "status": "ok" if ok else "failed", "reason": "" if ok else FAILED_REASON,
        "path": str(slide_path), "n_patches": len(coords), "mpp": 0.499, "mpp_source": "slide_properties",
        "effective_mpp": 0.499, "seconds": 1.5})


def tiny_checkpoint(fold: int, encoder: str = ENCODER, dim: int = DIM, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    from ghanet_pipeline.model import build_model

    torch.manual_seed(seed + fold)
    config = {"feature_dim": dim, "group_sizes": [2, 3, 1], "n_bins": 4, "hidden": 32, "heads": 2, "head_dim": 16,
              "dropout": 0.25, "attention_mode": "clean"}
    model = build_model("ghanet", config).eval()
    ckpt = {"state_dict": model.state_dict(), "model": "ghanet", "model_config": config, "encoder": encoder,
            "feature_dim": dim, "group_names": list(GROUPS), "target_columns": [["a", "b"], ["c", "d", "e"], ["f"]],
            "bin_edges": [0.0, 5.0, 10.0, 20.0, 100.0], "train_median_risk": None, "fold": fold, "epoch": 0}
    return model, ckpt


# slide id -> (case id, patches, ok)
SLIDES = {
    "S-single": ("P1", 40, True),
    "S-two-a": ("P2", 30, True),
    "S-two-b": ("P2", 12, True),
    "S-half-ok": ("P3", 25, True),
    "S-failed-of-P3": ("P3", 0, False),
    "S-only-failed": ("P4", 0, False),
    "S-evil": (EVIL_CASE, 20, True),
    "S-html": (HTML_CASE, 18, True),
}


def build(root: Path, folds: int = 2, encoder: str = ENCODER, seed: int = 7, model_seed: int = 0) -> RunDir:
    rng = np.random.default_rng(seed)
    rows = []
    for slide_id, (case_id, n, ok) in SLIDES.items():
        # a copy of the real slide per slide id: a sample sheet may not list one file under two ids
        slide_path = root / "slides" / f"{slide_id}.svs"
        slide_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL_SLIDE, slide_path)
        write_slide_stores(root, slide_id, n, rng, ok, slide_path=slide_path)
        rows.append({"slide_id": slide_id, "case_id": case_id, "path": str(slide_path)})
    slides = pd.DataFrame(rows)
    samples_csv = root / "samples.csv"
    slides.to_csv(samples_csv, index=False)
    run = RunDir(root, samples_csv, root / "features" / encoder, root / "models", slides)
    for fold in range(folds):
        model, ckpt = tiny_checkpoint(fold, encoder=encoder, seed=model_seed)
        risks = fold_risks(model, run)
        # As training stores it: the median of risks computed by metrics.risk_from_survival.
        ckpt["train_median_risk"] = float(np.median(np.array(list(risks.values()), dtype=np.float32)))
        run.fold_risks[fold], run.medians[fold] = risks, ckpt["train_median_risk"]
        fold_dir = run.models_dir / "ghanet" / f"fold{fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, fold_dir / "checkpoint_final.pt")
    return run


def patient_bag(run: RunDir, case_id: str) -> np.ndarray:
    from ghanet_pipeline.io.store import open_store

    parts = []
    for slide_id in run.slides.loc[run.slides.case_id == case_id, "slide_id"]:
        group = open_store(run.features_dir / f"{slide_id}.zarr")
        if group.attrs.get("status") == "ok":
            parts.append(np.asarray(group["features"][...], dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, DIM), np.float32)


def fold_risks(model: torch.nn.Module, run: RunDir) -> dict[str, float]:
    risks = {}
    for case_id in run.slides.case_id.unique():
        bag = patient_bag(run, case_id)
        if len(bag):
            with torch.no_grad():
                survival = model(torch.from_numpy(bag), return_attention=True)["S"].numpy()
            risks[case_id] = float(risk_from_survival(survival))  # the one risk formula, as infer uses it
    return risks


def add_training_outputs(run: RunDir, rng_seed: int = 3) -> None:
    """Contract-shaped outputs of train/summarize: result.json, predictions_val.csv, summary.json."""
    rng = np.random.default_rng(rng_seed)
    finals, bests = [], []
    for fold in sorted(run.medians):
        fold_dir = run.models_dir / "ghanet" / f"fold{fold}"
        n = 30
        risk = rng.normal(run.medians[fold], 0.3, n)  # around the checkpoint's training median
        months = rng.exponential(30, n) * np.exp(-(risk - run.medians[fold]) * 2)
        pred = pd.DataFrame({"case_id": [f"F{fold}-{i}" for i in range(n)], "risk": risk,
                             "survival_months": months, "censorship": rng.integers(0, 2, n)})
        for b in range(4):
            pred[f"S_{b}"] = np.linspace(0.9, 0.3, 4)[b]
        pred.to_csv(fold_dir / "predictions_val.csv", index=False)
        final, best = 0.55 + 0.05 * fold, 0.62 + 0.05 * fold
        finals.append(final)
        bests.append(best)
        (fold_dir / "result.json").write_text(json.dumps({
            "cindex_final": final, "cindex_best": best, "best_epoch": 3, "n_train": 60, "n_val": n,
            "excluded": [{"case_id": "X1", "reason": "no usable features"}],
            "train_median_risk": run.medians[fold]}))
    (run.models_dir / "ghanet" / "summary.json").write_text(json.dumps({
        "cindex_final_mean": float(np.mean(finals)), "cindex_final_std": float(np.std(finals)),
        "cindex_final_per_fold": finals, "cindex_best_mean_optimistic": float(np.mean(bests)),
        "cindex_best_std_optimistic": float(np.std(bests)), "cindex_best_per_fold_optimistic": bests}))
    bench = run.root / "benchmarks" / "tissue"
    bench.mkdir(parents=True, exist_ok=True)
    for i, slide_id in enumerate(SLIDES):
        (bench / f"{slide_id}.tsv").write_text(
            "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
            f"{1.0 + i}\t0:00:0{1 + i}\t{100 + i}\t200\t90\t95\t0\t1\t50\t1.0\n")


_SHARED_RUN: dict[str, RunDir] = {}


def inferred_run(tmp_path_factory) -> RunDir:
    """Built, given training outputs and run through ``ghanet infer`` (its CLI) once per test session."""
    if "run" not in _SHARED_RUN:
        from ghanet_pipeline import cli

        run = build(tmp_path_factory.mktemp("run"))
        add_training_outputs(run)
        code = cli.main(["infer", "--models-dir", str(run.models_dir), "--samples", str(run.samples_csv),
                         "--features-dir", str(run.features_dir), "--out-dir", str(run.root),
                         "--settings", json.dumps({"device": "cpu", "top_k": 4})])
        assert code == 0, "ghanet infer failed on the test run folder"
        _SHARED_RUN["run"] = run
    return _SHARED_RUN["run"]
