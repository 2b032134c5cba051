"""The training loop's cost model (issue 15): no prediction of the training set per epoch (its
statistics are taken once, at the end), learning curves in metrics.csv, the best checkpoint's
train median risk from its own weights, and the opt-in bf16 autocast on CPU."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import settings, write_cohort

from ghanet_pipeline.survival.metrics import risk_from_survival
from ghanet_pipeline.training import train as train_module
from ghanet_pipeline.training.train import train_fold

METRICS_COLUMNS = ["epoch", "loss", "nll", "recon", "val_loss", "val_cindex", "train_cindex", "lr", "seconds"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("cohort"), n_patients=24, seed=2)


def test_training_set_is_predicted_once_not_every_epoch(cohort, tmp_path, monkeypatch):
    genomics_dir, features_dir = cohort
    calls: list[int] = []
    real = train_module.evaluate

    def counting(model, patients, *args, **kwargs):
        calls.append(len(patients))
        return real(model, patients, *args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", counting)
    epochs = 4
    result = train_fold("ghanet", 0, genomics_dir, features_dir, tmp_path / "run", settings(epochs=epochs))
    n_train, n_val = result["n_train"], result["n_val"]
    assert n_train != n_val
    assert calls.count(n_val) == epochs, calls  # validation predictions each epoch, reused at the end
    # the training set: once for the final model, once more only if the best epoch is not the last
    assert calls.count(n_train) == (1 if result["best_epoch"] == epochs else 2), calls

    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(metrics.columns) == METRICS_COLUMNS
    assert list(metrics.epoch) == list(range(1, epochs + 1))
    assert metrics.train_cindex[:-1].isna().all() and math.isfinite(metrics.train_cindex.iloc[-1])
    assert metrics.train_cindex.iloc[-1] == pytest.approx(result["cindex_train_final"], abs=1e-6)
    assert np.isfinite(metrics.val_loss).all() and (metrics.val_loss > 0).all()
    assert np.allclose(metrics.lr, 2e-4) and (metrics.seconds > 0).all()


def test_checkpoints_carry_the_train_median_risk_of_their_own_weights(cohort, tmp_path):
    from ghanet_pipeline.model import build_model
    from ghanet_pipeline.training.bags import BagSource

    genomics_dir, features_dir = cohort
    out = tmp_path / "run"
    s = settings(epochs=3, seed=7)
    train_fold("abmil", 0, genomics_dir, features_dir, out, s)
    gf = train_module.load_genomics_fold(genomics_dir, 0)
    cohort_ = train_module.build_cohort("abmil", gf, features_dir, None)
    for name in ("checkpoint_final.pt", "checkpoint_best.pt"):
        ckpt = torch.load(out / name, weights_only=True)
        model = build_model("abmil", ckpt["model_config"])
        model.load_state_dict(ckpt["state_dict"])
        survival = train_module.predict(model, cohort_.train, cohort_.bags, torch.device("cpu"))
        expected = float(np.median(risk_from_survival(survival)))
        assert ckpt["train_median_risk"] == pytest.approx(expected, abs=1e-6), name
    assert isinstance(cohort_.bags, BagSource)


def test_bf16_on_cpu_is_opt_in_and_close_to_fp32(cohort, tmp_path):
    genomics_dir, features_dir = cohort
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        train_fold("abmil", 0, genomics_dir, features_dir, out, settings(epochs=2, precision=precision))
        runs[precision] = pd.read_csv(out / "predictions_val.csv")
    a, b = runs["fp32"], runs["bf16"]
    curves = [c for c in a.columns if c.startswith("S_")]
    diff = np.abs(a[curves].to_numpy() - b[curves].to_numpy()).max()
    assert 0 < diff < 0.05, diff  # bf16 really ran (not bit-identical) and stays close
    assert settings().precision == "auto"  # the default stays fp32 on CPU (bit-identical reruns)
    assert isinstance(train_module.autocast_for(torch.device("cpu"), "auto"), type(train_module.nullcontext()))
