"""Training stage: real small models trained on a small synthetic cohort written per the
contracts (genomics outputs + Zarr feature stores), through the same entry points as the rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ghanet_pipeline import cli
from ghanet_pipeline.config import section_from_json
from ghanet_pipeline.contracts.base import field_names
from ghanet_pipeline.contracts.training import CheckpointMeta, FoldResult
from ghanet_pipeline.io import store
from ghanet_pipeline.model import (
    DimensionMismatchError,
    check_features,
    check_genomic_columns,
    load_fold_model,
)
from ghanet_pipeline.training.train import train_fold

GROUPS = {"Tumor Suppressor Genes": 3, "Oncogenes": 1, "Cytokines": 4}  # target counts; one family of one


# ----------------------------------------------------------------------------- the synthetic cohort


def write_cohort(
    root: Path,
    n_patients: int = 30,
    dim: int = 16,
    seed: int = 0,
    patches: tuple[int, int] = (4, 40),
    two_slides: int = 3,
    without_store: tuple[str, ...] = (),
    failed_store: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """Genomics outputs (patients.csv, groups.json, summary.json, fold0/*) and feature stores.

    A hidden risk z sets survival (higher z, shorter) and shifts the mean of a third of each
    patient's patch features and of the genomic columns, so a model can learn it.
    """
    rng = np.random.default_rng(seed)
    genomics_dir, features_dir = root / "genomics", root / "features"
    fold_dir = genomics_dir / "fold0"
    fold_dir.mkdir(parents=True)
    features_dir.mkdir(parents=True)

    case_ids = [f"P{i:03d}" for i in range(n_patients)]
    z = rng.normal(size=n_patients)
    months = np.round(np.exp(2.5 - z + 0.3 * rng.normal(size=n_patients)), 2)
    censorship = (rng.random(n_patients) < 0.3).astype(int)
    edges = np.quantile(months[censorship == 0], [0, 0.25, 0.5, 0.75, 1.0])
    edges[0], edges[-1] = months.min() - 1e-6, months.max() + 1e-6
    bins = np.clip(np.searchsorted(edges, months, side="right") - 1, 0, 3)

    columns = [f"G{j}_{s}" for j in range(6) for s in ("rnaseq", "cnv")]
    weights = rng.normal(size=len(columns))
    genomic = z[:, None] * weights[None, :] + 0.5 * rng.normal(size=(n_patients, len(columns)))
    genomic = (genomic - genomic.mean(0)) / genomic.std(0)
    pd.DataFrame(genomic.astype("float32"), index=pd.Index(case_ids, name="case_id"), columns=columns).to_parquet(
        fold_dir / "genomics.parquet"
    )

    direction = rng.normal(size=dim)
    slide_ids = {}
    for i, case_id in enumerate(case_ids):
        ids = [f"{case_id}-S{s}" for s in range(2 if i < two_slides else 1)]
        slide_ids[case_id] = ids
        for slide_id in ids:
            if case_id in without_store:
                continue
            n = int(rng.integers(patches[0], patches[1] + 1))
            feats = rng.normal(size=(n, dim)).astype("float32")
            feats[: max(1, n // 3)] += 1.5 * z[i] * direction
            status = "failed" if case_id in failed_store else "ok"
            if status == "failed":
                feats = feats[:0]
            with store.atomic_path(features_dir / f"{slide_id}.zarr") as tmp:
                group = store.create_group(tmp, {"ghanet_store": "features", "status": status,
                                                 "reason": "unreadable" if status == "failed" else "",
                                                 "slide_id": slide_id, "encoder": "toy", "dim": dim})
                store.write_array(group, "features", feats.astype("float16"))
                store.write_array(group, "coords", np.zeros((len(feats), 2), dtype="int64"))

    pd.DataFrame({
        "case_id": case_ids, "survival_months": months, "censorship": censorship, "bin": bins,
        "label": 2 * bins + censorship, "slide_ids": [";".join(slide_ids[c]) for c in case_ids],
    }).to_csv(genomics_dir / "patients.csv", index=False)
    group_columns = [columns[:4], columns[4:6], columns[6:]]
    (genomics_dir / "groups.json").write_text(json.dumps({"convention": "clean", "groups": [
        {"name": name, "columns": cols} for name, cols in zip(GROUPS, group_columns)]}))
    targets = {name: cols[:k] for (name, k), cols in zip(GROUPS.items(), group_columns)}
    (fold_dir / "targets.json").write_text(json.dumps({"groups": targets}))
    order = rng.permutation(n_patients)
    n_val = n_patients // 5
    (fold_dir / "split.json").write_text(json.dumps({
        "train": [case_ids[i] for i in order[n_val:]], "val": [case_ids[i] for i in order[:n_val]]}))
    (genomics_dir / "summary.json").write_text(json.dumps({"n_patients": n_patients, "bin_edges": edges.tolist()}))
    return genomics_dir, features_dir


def settings(**overrides):
    values = {"epochs": 2, "grad_accum": 8, "seed": 3, "device": "cpu", **overrides}
    return section_from_json("train", json.dumps(values))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    return write_cohort(tmp_path_factory.mktemp("cohort"), without_store=("P010",), failed_store=("P011",))


# ----------------------------------------------------------------------------- tests


def test_ghanet_fold_outputs_follow_the_contract(cohort, tmp_path):
    genomics_dir, features_dir = cohort
    out = tmp_path / "ghanet" / "fold0"
    result = train_fold("ghanet", 0, genomics_dir, features_dir, out, settings())

    for name in ("checkpoint_final.pt", "checkpoint_best.pt", "metrics.csv", "predictions_val.csv", "result.json"):
        assert (out / name).is_file(), name
    assert not (out / "resume.pt").exists()
    excluded = {e["case_id"]: e["reason"] for e in result["excluded"]}
    assert set(excluded) == {"P010", "P011"}
    assert "status 'failed'" in excluded["P011"] and "no feature store" in excluded["P010"]

    split = json.loads((genomics_dir / "fold0" / "split.json").read_text())
    preds = pd.read_csv(out / "predictions_val.csv", dtype={"case_id": str})
    assert list(preds.columns) == ["case_id", "risk", "survival_months", "censorship", "S_0", "S_1", "S_2", "S_3"]
    assert set(preds.case_id) == set(split["val"]) - {"P010", "P011"}  # never scored as events at time 0
    assert np.allclose(preds.risk, -preds[["S_0", "S_1", "S_2", "S_3"]].sum(axis=1), atol=1e-4)
    assert result["n_train"] + result["n_val"] == 28

    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.epoch) == [1, 2]
    assert {"loss", "nll", "recon", "train_cindex", "val_cindex"} <= set(metrics.columns)
    assert (metrics.recon > 0).all()

    model, ckpt = load_fold_model(out / "checkpoint_final.pt")  # weights_only=True inside
    assert ckpt.model == "ghanet" and ckpt.feature_dim == 16 and ckpt.encoder == "toy"
    assert ckpt.group_names == tuple(GROUPS) and ckpt.model_config["group_sizes"] == [3, 1, 4]
    assert ckpt.selection == "final" and ckpt.epoch == 2 and len(ckpt.bin_edges) == 5
    assert np.isfinite(ckpt.train_median_risk) and -4 <= ckpt.train_median_risk <= 0
    saved = torch.load(out / "checkpoint_final.pt", weights_only=True)  # the record's keys, the weights, a version
    assert set(saved) == {*field_names(CheckpointMeta), "state_dict", "record_version"}
    assert json.loads((out / "result.json").read_text()) == result and set(result) == {
        *field_names(FoldResult), "record_version"}
    best = torch.load(out / "checkpoint_best.pt", weights_only=True)
    assert best["selection"] == "best_val_optimistic" and best["epoch"] == result["best_epoch"]

    # the saved model reproduces the saved predictions (two slides of P000 concatenated)
    from ghanet_pipeline.training.bags import BagSource, find_patient_stores
    case = preds.case_id.iloc[0]
    patients = pd.read_csv(genomics_dir / "patients.csv").set_index("case_id")
    found = find_patient_stores({case: patients.loc[case, "slide_ids"].split(";")}, features_dir)
    with torch.no_grad():
        out_model = model(BagSource(found.stores).get(case), return_attention=True)
    assert float(out_model["risk"]) == pytest.approx(float(preds.risk.iloc[0]), abs=1e-4)
    assert out_model["association"].shape == (3, found.stores[case][0].n_patches * len(found.stores[case]))

    with pytest.raises(DimensionMismatchError, match=r"encoder 'toy' \(16-d features\) but features/x.zarr holds 32-d"):
        check_features(ckpt, 32, "features/x.zarr")
    with pytest.raises(DimensionMismatchError, match=r"'toy'.*holds encoder 'other'"):
        check_features(ckpt, 16, "features/x.zarr", encoder="other")
    check_features(ckpt, 16, "features/x.zarr", encoder="toy")


def test_patient_with_two_slides_gets_both_bags(cohort):
    from ghanet_pipeline.training.bags import BagSource, find_patient_stores

    genomics_dir, features_dir = cohort
    found = find_patient_stores({"P000": ["P000-S0", "P000-S1"]}, features_dir)
    sizes = [s.n_patches for s in found.stores["P000"]]
    streamed = BagSource(found.stores, cache_bytes=0)
    bag = streamed.get("P000")
    assert not streamed.cache  # streamed: nothing kept
    assert len(sizes) == 2 and bag.shape == (sum(sizes), 16) and bag.dtype == torch.float32
    cached = BagSource(found.stores)
    assert cached.in_memory and not cached.cache  # nothing read until a bag is asked for
    assert torch.equal(cached.get("P000"), bag) and set(cached.cache) == {"P000"}
    first = np.asarray(store.open_store(features_dir / "P000-S0.zarr")["features"][...], dtype="float32")
    assert torch.equal(bag[: sizes[0]], torch.from_numpy(first))


def test_folds_of_one_job_read_each_feature_store_once(cohort, tmp_path, monkeypatch):
    """`ghanet train --fold A B` shares the bags across its folds: the second fold reads no store
    the first one read (this cohort has one fold: it is trained twice), and it trains exactly as
    it does alone."""
    from ghanet_pipeline.training import bags as bags_module

    genomics_dir, features_dir = cohort
    real, reads = bags_module.read_bag, []

    def counting(slides):
        reads.append(tuple(s.slide_id for s in slides))
        return real(slides)

    monkeypatch.setattr(bags_module, "read_bag", counting)
    shared: dict = {}
    alone = train_fold("abmil", 0, genomics_dir, features_dir, tmp_path / "alone", settings(max_patches=10))
    assert reads and len(reads) == len(set(reads))
    reads.clear()
    train_fold("abmil", 0, genomics_dir, features_dir, tmp_path / "first", settings(max_patches=10), shared_bags=shared)
    first_reads = len(reads)
    assert first_reads == len(shared) > 0
    again = train_fold("abmil", 0, genomics_dir, features_dir, tmp_path / "second", settings(max_patches=10),
                       shared_bags=shared)
    assert len(reads) == first_reads  # nothing read again
    assert again["cindex_final"] == alone["cindex_final"]
    a, b = (torch.load(tmp_path / run / "checkpoint_final.pt", weights_only=False) for run in ("second", "alone"))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_same_seed_gives_identical_weights(cohort, tmp_path):
    genomics_dir, features_dir = cohort
    runs = [train_fold("abmil", 0, genomics_dir, features_dir, tmp_path / f"r{i}", settings(seed=5, max_patches=10))
            for i in range(2)]
    other = train_fold("abmil", 0, genomics_dir, features_dir, tmp_path / "r2", settings(seed=6, max_patches=10))
    states = [torch.load(tmp_path / f"r{i}" / "checkpoint_final.pt", weights_only=True)["state_dict"] for i in range(3)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])
    assert runs[0]["cindex_final"] == runs[1]["cindex_final"] and other["n_train"] == runs[0]["n_train"]


# The loop (and so resuming) is the same for every model; ABMIL keeps the resume files small.
RESUME_SETTINGS = {"epochs": 4, "grad_accum": 4, "seed": 2, "device": "cpu", "max_patches": 800}


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, caplog):
    genomics_dir, features_dir = write_cohort(tmp_path / "c", n_patients=20, seed=4, patches=(600, 1200))
    epochs = RESUME_SETTINGS["epochs"]
    reference = tmp_path / "uninterrupted"
    train_fold("abmil", 0, genomics_dir, features_dir, reference, settings(**RESUME_SETTINGS))

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ghanet_pipeline", "train", "--model", "abmil", "--fold", "0",
           "--genomics-dir", str(genomics_dir), "--features-dir", str(features_dir), "--out", str(out),
           "--settings", json.dumps(RESUME_SETTINGS)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},  # as this process
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if (out / "resume.pt").is_file():  # renamed into place whole after an epoch
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "result.json").exists(), "training finished before the kill; make the cohort larger"
    assert (out / "resume.pt").is_file()

    caplog.set_level("INFO", logger="ghanet_pipeline.training.train")
    caplog.clear()  # only the resumed run's records (the reference run may have logged too)
    train_fold("abmil", 0, genomics_dir, features_dir, out, settings(**RESUME_SETTINGS))
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming from")]
    assert len(resumed) == 1
    resumed_after = int(resumed[0].split("after epoch ")[1])
    assert 1 <= resumed_after < epochs
    trained = [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert trained == [f"epoch {e}/{epochs}" for e in range(resumed_after + 1, epochs + 1)]  # none redone
    a = torch.load(reference / "checkpoint_final.pt", weights_only=True)
    b = torch.load(out / "checkpoint_final.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert list(pd.read_csv(out / "metrics.csv").epoch) == list(range(1, epochs + 1))
    assert not (out / "resume.pt").exists()


def test_genomics_only_snn_without_features_and_summary(cohort, tmp_path):
    genomics_dir, _ = cohort
    models = tmp_path / "models" / "snn"
    # a second fold, same patients, other split: the summary spans folds
    fold1 = genomics_dir.parent / "g2"
    if not fold1.exists():
        import shutil

        shutil.copytree(genomics_dir, fold1)
        split = json.loads((fold1 / "fold0" / "split.json").read_text())
        swapped = {"train": split["train"][6:] + split["val"], "val": split["train"][:6]}
        shutil.copytree(fold1 / "fold0", fold1 / "fold1")
        (fold1 / "fold1" / "split.json").write_text(json.dumps(swapped))
    for fold in (0, 1):
        rc = cli.main(["train", "--model", "snn", "--fold", str(fold), "--genomics-dir", str(fold1),
                       "--out", str(models / f"fold{fold}"),
                       "--settings", json.dumps({"models": ["snn"], "epochs": 8, "grad_accum": 4, "seed": 1})])
        assert rc == 0
    results = [json.loads((models / f"fold{k}" / "result.json").read_text()) for k in (0, 1)]
    assert all(r["excluded"] == [] and r["n_train"] + r["n_val"] == 30 for r in results)  # no slides needed
    _, ckpt = load_fold_model(models / "fold0" / "checkpoint_final.pt")
    assert ckpt.model_config["input_dim"] == 12 and len(ckpt.genomic_columns) == 12
    with pytest.raises(DimensionMismatchError, match="11 genomic columns.*expects 12"):
        check_genomic_columns(ckpt, ckpt.genomic_columns[:11], "other/genomics.parquet")

    assert cli.main(["summarize", "--model", "snn", "--models-dir", str(models)]) == 0
    summary = json.loads((models / "summary.json").read_text())
    finals = [r["cindex_final"] for r in results]
    assert summary["cindex_final_per_fold"] == finals
    assert summary["cindex_final_mean"] == pytest.approx(np.mean(finals))
    assert summary["cindex_final_std"] == pytest.approx(np.std(finals, ddof=0))  # population std
    assert summary["cindex_best_per_fold_optimistic"] == [r["cindex_best"] for r in results]
    for key in ("cindex_best_mean_optimistic", "cindex_best_std_optimistic"):
        assert key in summary
    # the genomic signal is strong: the held-out patients are ranked well
    assert summary["cindex_final_mean"] > 0.65


def test_missing_features_dir_for_a_slide_model_is_an_error(cohort, tmp_path):
    genomics_dir, _ = cohort
    rc = cli.main(["train", "--model", "abmil", "--fold", "0", "--genomics-dir", str(genomics_dir),
                   "--out", str(tmp_path / "x"), "--settings", json.dumps({"epochs": 1})])
    assert rc == 1
    assert not (tmp_path / "x" / "result.json").exists()


def test_one_job_of_several_folds_keeps_the_complete_ones(tmp_path, capfd):
    """`ghanet train --fold 0 1 --keep-complete` (rule train_model): a rerun keeps every fold whose
    outputs are complete and current, and trains again a fold with a missing output (a crash),
    older than its inputs (features rewritten) or of other settings (fingerprint)."""
    import shutil

    genomics_dir, features_dir = write_cohort(tmp_path / "cohort", n_patients=20)
    shutil.copytree(genomics_dir / "fold0", genomics_dir / "fold1")
    outs = [tmp_path / "abmil" / f"fold{k}" for k in (0, 1)]

    def run(epochs: int = 2) -> dict[int, float]:
        """Exit code checked; returns each fold's result.json modification time."""
        argv = ["train", "--model", "abmil", "--fold", "0", "1", "--keep-complete",
                "--genomics-dir", str(genomics_dir), "--features-dir", str(features_dir),
                "--out", *map(str, outs), "--settings", json.dumps({"epochs": epochs, "grad_accum": 4, "seed": 3,
                                                                     "device": "cpu"})]
        assert cli.main(argv) == 0
        return {k: (out / "result.json").stat().st_mtime_ns for k, out in enumerate(outs)}

    first = run()
    results = [FoldResult.from_attrs(json.loads((out / "result.json").read_text())) for out in outs]
    assert all(r.fingerprint for r in results) and results[0].fingerprint != results[1].fingerprint
    capfd.readouterr()
    assert run() == first  # both complete and current: nothing trained
    assert capfd.readouterr().err.count("complete and current, kept") == 2

    (outs[1] / "checkpoint_final.pt").unlink()  # fold 1 crashed before its final checkpoint
    again = run()
    assert again[0] == first[0] and again[1] > first[1]
    assert "no checkpoint_final.pt; training" in capfd.readouterr().err
    retrained = FoldResult.from_attrs(json.loads((outs[1] / "result.json").read_text()))
    assert retrained.cindex_final == results[1].cindex_final  # same seed, same fold, same model

    store_meta = next(features_dir.glob("*.zarr")) / "zarr.json"
    later = time.time() + 5
    os.utime(store_meta, (later, later))  # a feature store rewritten after the results
    newer = run()
    assert all(newer[k] > again[k] for k in (0, 1))

    with_more_epochs = run(epochs=3)
    assert all(with_more_epochs[k] > newer[k] for k in (0, 1))
    assert all(FoldResult.from_attrs(json.loads((o / "result.json").read_text())).epochs == 3 for o in outs)


def test_folds_and_out_folders_must_pair_up(tmp_path):
    argv = ["train", "--model", "snn", "--fold", "0", "1", "--genomics-dir", str(tmp_path), "--out", str(tmp_path)]
    assert cli.main(argv) == 2
