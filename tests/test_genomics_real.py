"""Genomics stage on the real MCAT tables (TCGA-BLCA, TCGA-UCEC) against the published reference numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.genomics import preprocess as genomics
from ghanet_pipeline.genomics.groups import (
    match_groups,
    read_definition,
    usable_columns,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "genomics"
BLCA_FAITHFUL = [94, 334, 521, 468, 1495, 479]
UCEC_FAITHFUL = [3, 24, 21, 22, 64, 15]

# The real TCGA tables are not shipped: without ../shared/data these tests are deselected (conftest.py).
pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def blca_table() -> pd.DataFrame:
    return genomics.read_cohort_table(DATA / "tcga_blca_all_clean.csv.zip")


@pytest.fixture(scope="module")
def signatures():
    return read_definition(DATA / "signatures.csv")


@pytest.fixture(scope="module")
def blca_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("blca") / "genomics"
    settings = stage_settings("genomics", None, json.dumps({"convention": "faithful"}))
    inputs = genomics.Inputs(
        DATA / "tcga_blca_all_clean.csv.zip", DATA / "signatures.csv", DATA / "splits" / "tcga_blca"
    )
    return genomics.run(inputs, settings, out), out


def _sizes(table: pd.DataFrame, definition, convention: str) -> list[int]:
    columns, _ = usable_columns(list(table.columns), convention)
    groups, empty = match_groups(definition, columns)
    assert not empty
    return [len(g.columns) for g in groups]


def test_blca_faithful_reference(blca_run, signatures):
    summary, out = blca_run
    assert list(summary["groups"]) == list(signatures.names)
    assert list(summary["groups"].values()) == BLCA_FAITHFUL
    assert summary["dropped_columns"] == ["ZXDC_rnaseq"]
    assert np.round(summary["bin_edges"], 2).tolist() == [0.49, 7.62, 13.57, 21.85, 163.17]
    assert summary["n_patients"] == 373
    assert summary["folds"] == [{"train": 298, "val": 75}] * 3 + [{"train": 299, "val": 74}] * 2
    assert summary["problems"] == []
    groups = json.loads((out / "groups.json").read_text())
    assert groups["convention"] == "faithful"
    assert [len(g["columns"]) for g in groups["groups"]] == BLCA_FAITHFUL
    assert all(g["columns"] == sorted(g["columns"]) for g in groups["groups"])


def test_blca_patients_bins_and_labels(blca_run):
    summary, out = blca_run
    patients = pd.read_csv(out / "patients.csv", dtype={"case_id": str})
    assert len(patients) == patients.case_id.nunique() == 373
    edges = np.asarray(summary["bin_edges"])
    expected_bins = np.searchsorted(edges, patients.survival_months.to_numpy(), side="right") - 1
    assert (patients["bin"].to_numpy() == expected_bins).all()
    assert (patients["label"] == patients["bin"] * 2 + patients["censorship"]).all()
    assert set(patients.censorship) == {0, 1}
    # no sample sheet: the slides are the table's, every table slide belongs to exactly one patient
    slides = [s for cell in patients.slide_ids for s in cell.split(";")]
    assert len(slides) == len(set(slides)) == 437


def test_blca_folds_scalers_targets(blca_run):
    summary, out = blca_run
    columns = sorted({c for g in json.loads((out / "groups.json").read_text())["groups"] for c in g["columns"]})
    assert len(columns) == summary["n_features"]
    for k in range(5):
        split = json.loads((out / f"fold{k}" / "split.json").read_text())
        assert not set(split["train"]) & set(split["val"])
        assert len(set(split["train"]) | set(split["val"])) == 373
        frame = pd.read_parquet(out / f"fold{k}" / "genomics.parquet")
        assert frame.index.name == "case_id" and list(frame.columns) == columns and frame.shape[0] == 373
        assert np.isfinite(frame.to_numpy()).all()
        train = frame.loc[split["train"]].to_numpy(dtype=float)
        varying = train.std(axis=0) > 0
        assert np.abs(train.mean(axis=0)).max() < 1e-4
        assert np.allclose(train.std(axis=0)[varying], 1.0, atol=1e-3)
        scaler = json.loads((out / f"fold{k}" / "scaler.json").read_text())
        assert scaler["columns"] == columns and len(scaler["mean"]) == len(scaler["std"]) == len(columns)
        targets = json.loads((out / f"fold{k}" / "targets.json").read_text())["groups"]
        assert list(targets) == list(summary["groups"])
        assert all(1 <= len(cols) <= summary["groups"][name] for name, cols in targets.items())
    # fold 0's selection matches the target sizes of the model doc's parameter-count check
    fold0 = json.loads((out / "fold0" / "targets.json").read_text())["groups"]
    assert [len(v) for v in fold0.values()] == [10, 30, 48, 51, 188, 37]


def test_blca_clean_keeps_last_column(blca_table, signatures):
    assert _sizes(blca_table, signatures, "faithful") == BLCA_FAITHFUL
    assert _sizes(blca_table, signatures, "clean") == [94, 334, 521, 468, 1496, 479]


def test_ucec_sizes(signatures):
    table = genomics.read_cohort_table(DATA / "tcga_ucec_all_clean.csv.zip")
    assert usable_columns(list(table.columns), "faithful")[1] == ["ZNF823_cnv"]
    assert _sizes(table, signatures, "faithful") == UCEC_FAITHFUL
    assert _sizes(table, signatures, "clean") == [3, 24, 21, 22, 65, 15]
