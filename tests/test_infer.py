"""ghanet infer: slide-only predictions per patient and heatmaps per slide, on a tiny real run folder."""

from __future__ import annotations

import json

import ghanet_rundir as rd
import numpy as np
import pandas as pd
import pytest
import torch

from ghanet_pipeline import cli
from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.inference import heatmaps
from ghanet_pipeline.inference import predict as infer
from ghanet_pipeline.io.store import open_store
from ghanet_pipeline.model import DimensionMismatchError
from ghanet_pipeline.model.ghanet import topk_count
from ghanet_pipeline.survival import km


def settings(**values):
    return stage_settings("infer", None, json.dumps({"device": "cpu", "top_k": 4, **values}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> rd.RunDir:
    return rd.inferred_run(tmp_path_factory)  # built and run through `ghanet infer` (CLI) once per session


@pytest.fixture(scope="module")
def predicted(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir.root / "predictions.csv", dtype={"case_id": str, "folds_used": str},
                       keep_default_na=False)


def by_case(table: pd.DataFrame, case_id: str) -> pd.Series:
    rows = table[table.case_id == case_id]
    assert len(rows) == 1, f"{case_id!r} should appear exactly once in {list(table.case_id)}"
    return rows.iloc[0]


def test_every_patient_is_listed_and_failed_ones_are_missing_with_reason(run_dir, predicted):
    cases = {c for c, _, _ in rd.SLIDES.values()}
    assert len(predicted) == len(cases)
    only_failed = by_case(predicted, "P4")
    assert only_failed.status == "missing"
    assert only_failed.risk == "" and only_failed.risk_group == ""
    assert "S-only-failed" in only_failed.reason and "no tissue found" in only_failed.reason
    half = by_case(predicted, "P3")
    assert half.status == "ok" and half.slides_used == "S-half-ok"
    assert "S-failed-of-P3" in half.reason and "no tissue found" in half.reason
    assert half.slide_ids == "S-half-ok;S-failed-of-P3"


def test_risk_is_the_fold_average_and_group_follows_the_training_median(run_dir, predicted):
    threshold = np.mean(list(run_dir.medians.values()))
    for case_id in ("P1", "P2", "P3"):
        row = by_case(predicted, case_id)
        expected = np.mean([run_dir.fold_risks[f][case_id] for f in run_dir.fold_risks])
        assert float(row.risk) == pytest.approx(expected, rel=1e-4)
        s = np.array([float(row[f"S_{i}"]) for i in range(4)])
        assert np.all(np.diff(s) <= 1e-6) and float(row.risk) == pytest.approx(-s.sum(), rel=1e-4)
        assert row.risk_group == str(km.split_at(expected, threshold))
        assert row.folds_used == "0;1"
    groups = set(predicted.loc[predicted.status == "ok", "risk_group"])
    assert groups == {"high", "low"}  # the medians were set from these very patients


def test_formula_and_html_case_ids_are_neutralised_in_csv(run_dir, predicted):
    text = (run_dir.root / "predictions.csv").read_text()
    assert "\n'=cmd|' /C calc'!A0," in text  # quoted by a leading apostrophe, not evaluable
    assert "\n=cmd" not in text
    row = by_case(predicted, "'" + rd.EVIL_CASE)
    assert row.status == "ok"
    assert by_case(predicted, rd.HTML_CASE).status == "ok"


def test_heatmap_arrays_line_up_with_coords(run_dir, predicted):
    totals: dict[str, np.ndarray] = {}
    for slide_id, (case_id, n, ok) in rd.SLIDES.items():
        path = run_dir.root / "heatmaps" / f"{slide_id}.zarr"
        if not ok:
            assert not path.exists()
            continue
        group = open_store(path)
        coords = np.asarray(group["coords"][...])
        features_coords = np.asarray(open_store(run_dir.features_dir / f"{slide_id}.zarr")["coords"][...])
        np.testing.assert_array_equal(coords, features_coords)
        morph = np.asarray(group["morphology_attention"][...])
        assoc = np.asarray(group["association"][...])
        assert morph.shape == (n,) and assoc.shape == (len(rd.GROUPS), n)
        assert np.isfinite(morph).all() and np.isfinite(assoc).all()
        assert (morph > 0).all() and (assoc >= 0).all()
        assert list(group.attrs["group_names"]) == list(rd.GROUPS)
        assert len(group.attrs["models"]) == 2
        sums = np.concatenate([[morph.sum()], assoc.sum(axis=1)])
        totals[case_id] = totals.get(case_id, 0) + sums
        assert group.attrs["bag_mass"]["morphology_attention"] == pytest.approx(morph.sum(), abs=1e-5)
    # over a patient's bag each map is a distribution: one slide alone, or its slides together
    for case_id, sums in totals.items():
        np.testing.assert_allclose(sums, 1.0, atol=1e-4, err_msg=case_id)
    # a two-slide patient: each slide holds part of the mass, and the top-k set spans the bag
    a = open_store(run_dir.root / "heatmaps" / "S-two-a.zarr")
    b = open_store(run_dir.root / "heatmaps" / "S-two-b.zarr")
    assert 0 < float(np.sum(a["morphology_attention"][...])) < 1
    nonzero = (np.asarray(a["association"][...]) > 0).sum(axis=1) + (np.asarray(b["association"][...]) > 0).sum(axis=1)
    # averaging folds can only widen the union of each fold's top-k set
    k = topk_count(30 + 12)
    assert (nonzero >= k).all() and (nonzero <= 2 * k).all()


def test_heatmap_matches_a_direct_forward_pass(run_dir, predicted):
    from ghanet_pipeline.model import load_fold_model

    bag = torch.from_numpy(rd.patient_bag(run_dir, "P1"))
    morph, assoc = [], []
    for fold in (0, 1):
        model, _ = load_fold_model(run_dir.models_dir / "ghanet" / f"fold{fold}" / "checkpoint_final.pt")
        with torch.no_grad():
            out = model(bag, return_attention=True)
        morph.append(out["morphology"].numpy())
        assoc.append(out["association"].numpy())
    group = open_store(run_dir.root / "heatmaps" / "S-single.zarr")
    np.testing.assert_allclose(group["morphology_attention"][...], np.mean(morph, axis=0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(group["association"][...], np.mean(assoc, axis=0), rtol=1e-4, atol=1e-7)


def test_geojson_has_one_polygon_per_patch_with_values(run_dir, predicted):
    doc = json.loads((run_dir.root / "heatmaps" / "S-single.geojson").read_text())
    group = open_store(run_dir.root / "heatmaps" / "S-single.zarr")
    coords = np.asarray(group["coords"][...])
    morph = np.asarray(group["morphology_attention"][...])
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(coords)
    for feature, (x, y), m in zip(doc["features"], coords.tolist(), morph.tolist()):
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] == [x, y]
        assert ring[2] == [x + rd.PATCH, y + rd.PATCH]
        values = feature["properties"]["measurements"]
        assert values["morphology_attention"] == pytest.approx(m, rel=1e-5)
        assert set(values) == {"morphology_attention", *(f"association_{g}" for g in rd.GROUPS)}


def test_pngs_are_written(run_dir, predicted):
    from PIL import Image

    with Image.open(run_dir.root / "heatmaps" / "S-single.png") as img:
        assert img.width > 600 and img.height > 300
    topk = run_dir.root / "heatmaps" / "S-single_topk.png"
    assert rd.REAL_SLIDE.is_file(), f"{rd.REAL_SLIDE} is part of the repository (tests/data/slides/README.md)"
    with Image.open(topk) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10  # real tissue, not a blank canvas


def test_top_patches_are_the_most_attended():
    values = np.array([0.1, 0.4, 0.05, 0.4, 0.05])
    assert heatmaps.top_indices(values, 3).tolist() == [1, 3, 0]
    assert heatmaps.top_indices(values, 0).size == 0
    assert heatmaps.top_indices(values, 99).size == 5


def test_one_fold_on_request(run_dir, predicted, tmp_path):
    from ghanet_pipeline.io.sheet import read_samples

    table = infer.run(read_samples(run_dir.samples_csv), run_dir.models_dir, run_dir.features_dir, tmp_path, settings(fold=1, top_k=0),
                      tiles_dir=run_dir.root / "tiles")
    p1 = table[table.case_id == "P1"].iloc[0]
    assert p1.folds_used == "1"
    assert p1.risk == pytest.approx(run_dir.fold_risks[1]["P1"], rel=1e-4)
    assert p1.risk_group == str(km.split_at(run_dir.fold_risks[1]["P1"], run_dir.medians[1]))
    assert not list((tmp_path / "heatmaps").glob("*_topk.png"))
    with pytest.raises(infer.InferError, match="infer.fold = 7"):
        infer.find_checkpoints(run_dir.models_dir, "ghanet", 7, "final")


def test_encoder_mismatch_names_both(run_dir, tmp_path):
    from ghanet_pipeline.io.sheet import read_samples

    fold_dir = tmp_path / "models" / "ghanet" / "fold0"
    fold_dir.mkdir(parents=True)
    _, ckpt = rd.tiny_checkpoint(0, encoder="resnet50_trunc", dim=rd.DIM)
    ckpt["train_median_risk"] = -2.0
    torch.save(ckpt, fold_dir / "checkpoint_final.pt")
    with pytest.raises(DimensionMismatchError) as err:
        infer.run(read_samples(run_dir.samples_csv), tmp_path / "models", run_dir.features_dir, tmp_path,
                  settings(top_k=0))
    message = str(err.value)
    assert "resnet50_trunc" in message and rd.ENCODER in message and "16-d" in message
    assert not (tmp_path / "predictions.csv").exists()
    code = cli.main(["infer", "--models-dir", str(tmp_path / "models"), "--samples", str(run_dir.samples_csv),
                     "--features-dir", str(run_dir.features_dir), "--out-dir", str(tmp_path),
                     "--settings", json.dumps({"device": "cpu"})])
    assert code == 1


def test_feature_dim_mismatch_names_both(run_dir, tmp_path):
    from ghanet_pipeline.io.sheet import read_samples

    fold_dir = tmp_path / "models" / "ghanet" / "fold0"
    fold_dir.mkdir(parents=True)
    _, ckpt = rd.tiny_checkpoint(0, encoder=rd.ENCODER, dim=32)
    torch.save(ckpt, fold_dir / "checkpoint_final.pt")
    with pytest.raises(DimensionMismatchError, match=r"32-d features.*16-d"):
        infer.run(read_samples(run_dir.samples_csv), tmp_path / "models", run_dir.features_dir, tmp_path,
                  settings(top_k=0))


def test_a_slide_without_a_feature_store_gives_the_tissue_stage_reason(tmp_path):
    from ghanet_pipeline.io.store import write_json

    row = pd.Series({"slide_id": "S-gone", "case_id": "P9", "path": "/nowhere/S-gone.svs"})
    no_record = infer.inspect_slide(row, tmp_path / "features", tmp_path)
    assert not no_record.ok and "no feature store at" in no_record.reason
    write_json(tmp_path / "status" / "S-gone.json", {"slide_id": "S-gone", "status": "failed",
                                                      "reason": rd.FAILED_REASON})
    failed = infer.inspect_slide(row, tmp_path / "features", tmp_path)
    assert not failed.ok and failed.reason == f"tissue stage: {rd.FAILED_REASON}"
    write_json(tmp_path / "status" / "S-gone.json", {"slide_id": "S-gone", "status": "ok", "reason": ""})
    assert "no feature store at" in infer.inspect_slide(row, tmp_path / "features", tmp_path).reason


def test_no_checkpoints_is_an_actionable_error(tmp_path):
    with pytest.raises(infer.InferError, match="infer.models_dir"):
        infer.find_checkpoints(tmp_path, "ghanet", None, "final")


@pytest.mark.parametrize("seed", range(20))
def test_risk_group_at_the_training_median_is_decided_once(tmp_path, seed):
    """One fold: the training median is the risk of one patient (odd count), so that patient sits exactly
    on the threshold. Train and infer compute risks with the same function and dtype, so infer sees the
    very same number, and the tie rule (docs/contracts.md: risk > threshold is high, else low) puts it low."""
    from ghanet_pipeline.io.sheet import read_samples

    run = rd.build(tmp_path / "run", folds=1, seed=seed, model_seed=seed)
    risks = run.fold_risks[0]
    assert len(risks) % 2 == 1, "the fixture needs an odd number of patients for an exact tie"
    on_median = [case for case, risk in risks.items() if risk == run.medians[0]]
    assert len(on_median) == 1
    table = infer.run(read_samples(run.samples_csv), run.models_dir, run.features_dir, tmp_path / "out",
                      settings(top_k=0), tiles_dir=run.root / "tiles")
    table = table.set_index("case_id")
    for case, risk in risks.items():
        assert float(np.float32(table.loc[case, "risk"])) == risk  # the same number as in training
        assert table.loc[case, "risk_group"] == ("high" if risk > run.medians[0] else "low")
    assert table.loc[on_median[0], "risk_group"] == "low"
