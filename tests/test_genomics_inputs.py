"""Genomics stage on small tables: formats, every bad-input case, joins, scaler, folds, targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ghanet_pipeline import cli
from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.genomics import preprocess as genomics
from ghanet_pipeline.genomics.folds import FoldError, make_folds, read_folds
from ghanet_pipeline.genomics.groups import GroupDefinitionError, read_definition
from ghanet_pipeline.genomics.targets import welch_pvalues
from ghanet_pipeline.survival.labels import assign_bins, bin_edges, class_labels

N = 24
GENOMIC = ["G1_rnaseq", "G1_cnv", "G2_rnaseq", "G3_rnaseq", "G3_mut", "G5_rnaseq", "G4_rnaseq", "G4_cnv"]
GROUPS = {"A": ["G1", "G2", "G3"], "B": ["G3", "G4", "X9"]}


def cohort(seed: int = 0) -> pd.DataFrame:
    """24 patients, one slide each (P00 has two); G1_rnaseq tracks survival, G3_mut is constant."""
    rng = np.random.default_rng(seed)
    months = np.round(rng.uniform(1, 100, N), 2)
    rows = {
        "Unnamed: 0": np.arange(N),
        "case_id": [f"P{i:02d}" for i in range(N)],
        "slide_id": [f"S{i:02d}" for i in range(N)],
        "age": rng.integers(40, 80, N),
        "survival_months": months,
        "censorship": (np.arange(N) % 3 == 0).astype(int),
    }
    for column in GENOMIC:
        rows[column] = np.round(rng.normal(size=N), 4)
    rows["G1_rnaseq"] = np.round(months / 10 + rng.normal(scale=0.1, size=N), 4)
    rows["G3_mut"] = 0
    table = pd.DataFrame(rows)
    extra = table.iloc[[0]].assign(slide_id="S00b")
    return pd.concat([table, extra], ignore_index=True)


def write_signatures(folder: Path) -> Path:
    path = folder / "signatures.csv"
    width = max(len(g) for g in GROUPS.values())
    pd.DataFrame({k: v + [""] * (width - len(v)) for k, v in GROUPS.items()}).to_csv(path, index=False)
    return path


def run(tmp_path: Path, table: pd.DataFrame, name: str = "cohort.csv", **kwargs):
    settings = stage_settings("genomics", None, json.dumps({"n_folds": 3, **kwargs.pop("settings", {})}))
    path = tmp_path / name
    if not path.exists():
        table.to_csv(path, index=False)
    inputs = genomics.Inputs(path, kwargs.pop("signatures", write_signatures(tmp_path)), **kwargs)
    out = tmp_path / f"out_{name.replace('.', '_')}"
    return genomics.run(inputs, settings, out), out


def lines_with(summary: dict, *words: str) -> list[str]:
    return [line for line in summary["problems"] if all(w in line for w in words)]


# ----------------------------------------------------------------------------- formats and groups


def test_csv_tsv_zip_and_bom_crlf_read_the_same(tmp_path):
    table = cohort()
    table.to_csv(tmp_path / "a.csv", index=False)
    table.to_csv(tmp_path / "b.tsv", index=False, sep="\t")
    table.to_csv(tmp_path / "c.csv.zip", index=False, compression={"method": "zip", "archive_name": "c.csv"})
    text = table.to_csv(index=False).replace("\n", "\r\n")
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    frames = [genomics.read_cohort_table(tmp_path / n) for n in ("a.csv", "b.tsv", "c.csv.zip", "d.csv")]
    assert list(frames[3].columns)[:2] == ["Unnamed: 0", "case_id"]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame, frames[0])
    summary, out = run(tmp_path, table, "d.csv")
    assert summary["n_patients"] == N and summary["problems"] == []


def test_groups_sorted_and_faithful_drops_last_genomic_column(tmp_path):
    clean, out = run(tmp_path, cohort(), settings={"convention": "clean"})
    groups = json.loads((out / "groups.json").read_text())["groups"]
    assert groups == [
        {"name": "A", "columns": ["G1_cnv", "G1_rnaseq", "G2_rnaseq", "G3_mut", "G3_rnaseq"]},
        {"name": "B", "columns": ["G3_mut", "G3_rnaseq", "G4_cnv", "G4_rnaseq"]},
    ]
    faithful, out = run(tmp_path, cohort(), "f.csv", settings={"convention": "faithful"})
    assert faithful["dropped_columns"] == ["G4_cnv"]
    assert faithful["groups"] == {"A": 5, "B": 3}
    assert "G4_cnv" not in pd.read_parquet(out / "fold0" / "genomics.parquet").columns
    assert clean["n_features"] == 7  # G5_rnaseq is in no group, so not a feature


def test_gmt_definition_gives_the_same_groups(tmp_path):
    gmt = tmp_path / "groups.gmt"
    gmt.write_text("A\tfirst\tG1\tG2\tG3\nB\thttp://x\tG3\tG4\tX9\n\nEMPTY\tnone\tNOPE\n")
    summary, out = run(tmp_path, cohort(), signatures=gmt)
    assert summary["groups"] == {"A": 5, "B": 4}
    assert lines_with(summary, "EMPTY", "left out")
    csv_summary, _ = run(tmp_path, cohort(), "again.csv")
    assert csv_summary["groups"] == summary["groups"]
    bad = tmp_path / "bad.gmt"
    bad.write_text("A G1 G2\n")
    with pytest.raises(GroupDefinitionError, match="line 1"):
        read_definition(bad)


def test_without_definition_one_group_per_modality(tmp_path):
    summary, _ = run(tmp_path, cohort(), signatures=None)
    assert summary["groups"] == {"rnaseq": 5, "cnv": 2, "mut": 1}


# ----------------------------------------------------------------------------- bad inputs (issue item 5)


def test_conflicting_survival_fails_naming_the_case(tmp_path):
    table = cohort()
    table.loc[table.slide_id == "S00b", "survival_months"] = 55.5
    with pytest.raises(genomics.GenomicsError, match=r"(?s)P00.*on_conflicting_duplicates"):
        run(tmp_path, table)
    summary, out = run(tmp_path, table, "first.csv", settings={"on_conflicting_duplicates": "first"})
    assert lines_with(summary, "P00", "kept the first row")
    patients = pd.read_csv(out / "patients.csv").set_index("case_id")
    assert patients.at["P00", "survival_months"] == table.survival_months[0] != 55.5


def test_conflicting_genomics_between_slides_reported(tmp_path):
    table = cohort()
    table.loc[table.slide_id == "S00b", "G2_rnaseq"] = 9.0
    summary, _ = run(tmp_path, table)
    assert lines_with(summary, "P00", "G2_rnaseq", "first row")


def test_bad_censorship_and_times_reported_and_left_out(tmp_path):
    table = cohort().astype({"censorship": object, "survival_months": object})
    table.loc[5, "censorship"] = 2
    table.loc[6, "censorship"] = "yes"
    table.loc[7, "survival_months"] = -3.0
    table.loc[8, "survival_months"] = "abc"
    table.loc[9, "survival_months"] = None
    summary, out = run(tmp_path, table)
    assert lines_with(summary, "P05", "censorship", "not 0")
    assert lines_with(summary, "P06", "'yes'")
    assert lines_with(summary, "P07", "negative")
    assert lines_with(summary, "P08", "not a number")
    assert lines_with(summary, "P09", "missing")
    patients = pd.read_csv(out / "patients.csv")
    assert summary["n_patients"] == len(patients) == N - 5
    assert not {"P05", "P06", "P07", "P08", "P09"} & set(patients.case_id)
    assert "P07" in (out / "report.txt").read_text()


def test_missing_nonnumeric_inf_huge_imputed_and_counted(tmp_path):
    table = cohort().astype({"G2_rnaseq": object})
    table.loc[3, "G2_rnaseq"] = None
    table.loc[4, "G2_rnaseq"] = "abc"
    table.loc[10, "G2_rnaseq"] = "inf"
    table.loc[11, "G2_rnaseq"] = 1e20
    summary, out = run(tmp_path, table, settings={"max_missing_fraction": 0.2})
    for kind, case in (("empty", "P03"), ("non-numeric", "P04"), ("infinite", "P10"), ("huge", "P11")):
        assert lines_with(summary, "G2_rnaseq", kind, case), kind
    assert [d["imputed"] for d in summary["fold_details"]] == [4, 4, 4]
    for k in range(3):
        frame = pd.read_parquet(out / f"fold{k}" / "genomics.parquet")
        assert (frame.loc[["P03", "P04", "P10", "P11"], "G2_rnaseq"] == 0).all()  # training mean
        assert np.isfinite(frame.to_numpy()).all()
        split = json.loads((out / f"fold{k}" / "split.json").read_text())
        observed = [c for c in split["train"] if c not in ("P03", "P04", "P10", "P11")]
        scaler = json.loads((out / f"fold{k}" / "scaler.json").read_text())
        mean = scaler["mean"][scaler["columns"].index("G2_rnaseq")]
        values = table.drop_duplicates("case_id").set_index("case_id").loc[observed, "G2_rnaseq"].astype(float)
        assert mean == pytest.approx(values.mean())


def test_too_many_missing_values_fail_naming_column_and_patient(tmp_path):
    table = cohort()
    table.loc[:12, "G2_rnaseq"] = np.nan
    with pytest.raises(genomics.GenomicsError, match=r"(?s)column.*G2_rnaseq.*max_missing_fraction"):
        run(tmp_path, table)
    table = cohort()
    table.loc[table.case_id == "P07", ["G1_rnaseq", "G1_cnv", "G2_rnaseq"]] = np.nan
    with pytest.raises(genomics.GenomicsError, match=r"patient.*P07"):
        run(tmp_path, table, "p.csv", settings={"max_missing_fraction": 0.2})


def test_missing_required_column_is_named(tmp_path):
    assert cli.main(["genomics", "--cohort-table", str(_write(tmp_path, cohort().drop(columns="censorship"))),
                     "--out-dir", str(tmp_path / "o")]) == 1
    with pytest.raises(genomics.GenomicsError, match="censorship"):
        genomics.read_cohort_table(tmp_path / "t.csv")


def _write(tmp_path: Path, table: pd.DataFrame) -> Path:
    table.to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv"


def test_slide_joins_report_every_gap(tmp_path):
    sheet = pd.DataFrame({"slide_id": [f"S{i:02d}" for i in range(22)] + ["S00b", "S99"],
                          "case_id": [f"P{i:02d}" for i in range(22)] + ["P00", "NOBODY"]})
    sheet["path"] = sheet.slide_id + ".svs"
    sheet.to_csv(tmp_path / "samples.csv", index=False)
    manifest = pd.DataFrame({"slide_id": [s for s in sheet.slide_id if s != "S02"]})
    manifest["status"] = np.where(manifest.slide_id == "S01", "failed", "ok")
    manifest["reason"] = np.where(manifest.slide_id == "S01", "cannot open", "")
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    summary, out = run(tmp_path, cohort(), samples=tmp_path / "samples.csv", manifest=tmp_path / "manifest.csv")
    assert lines_with(summary, "S99", "NOBODY", "no row in the cohort table")
    assert lines_with(summary, "S01", "failed", "cannot open")
    assert lines_with(summary, "S02", "not in the manifest")
    for case in ("P01", "P02", "P22", "P23"):
        assert lines_with(summary, f"patient {case}", "no usable slide"), case
    patients = pd.read_csv(out / "patients.csv", keep_default_na=False).set_index("case_id")
    assert len(patients) == N  # nobody dropped
    assert patients.at["P00", "slide_ids"] == "S00;S00b"
    assert patients.at["P01", "slide_ids"] == "" and patients.at["P05", "slide_ids"] == "S05"
    assert summary["n_without_slides"] == 4


def test_out_dir_with_foreign_files_is_refused(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious.txt").write_text("x")
    settings = stage_settings("genomics", None, None)
    with pytest.raises(genomics.GenomicsError, match="precious.txt"):
        genomics.run(genomics.Inputs(_write(tmp_path, cohort())), settings, tmp_path / "busy")


# ----------------------------------------------------------------------------- labels, folds, scaler, targets


def test_bins_are_left_closed_with_widened_outer_edges():
    months = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 10.0])
    censorship = np.array([0, 0, 0, 0, 0, 1])
    edges = bin_edges(months, censorship, 4)
    assert edges.tolist() == pytest.approx([1 - 1e-6, 2.0, 3.0, 4.0, 10 + 1e-6])
    bins = assign_bins(months, edges)
    assert bins.tolist() == [0, 1, 2, 3, 3, 3]  # 2.0 sits on an edge: the upper bin
    assert class_labels(bins, censorship).tolist() == [0, 2, 4, 6, 6, 7]


def test_made_folds_are_stratified_and_seeded():
    patients = [f"P{i}" for i in range(50)]
    labels = [i % 8 if i < 40 else 0 for i in range(50)]
    folds = make_folds(patients, labels, 5, seed=3)
    assert folds == make_folds(patients, labels, 5, seed=3) != make_folds(patients, labels, 5, seed=4)
    assert sorted(v for f in folds for v in f.val) == sorted(patients)
    for fold in folds:
        assert not set(fold.train) & set(fold.val) and len(fold.train) + len(fold.val) == 50
        assert len(fold.val) == 10
    for label in set(labels):
        per_fold = [sum(labels[patients.index(p)] == label for p in f.val) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1


def test_split_files_ragged_unknown_and_overlap(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    pd.DataFrame({"train": ["A", "B", "C", "GHOST"], "val": ["D", None, None, None]}).to_csv(splits / "splits_0.csv")
    problems: list[str] = []
    folds = read_folds(splits, ["A", "B", "C", "D", "E"], problems)
    assert folds[0].train == ("A", "B", "C") and folds[0].val == ("D",)
    assert any("GHOST" in p for p in problems) and any("E" in p and "neither" in p for p in problems)
    pd.DataFrame({"train": ["A", "B"], "val": ["B", "C"]}).to_csv(splits / "splits_1.csv")
    with pytest.raises(FoldError, match="both train and val: B"):
        read_folds(splits, ["A", "B", "C"], [])


def test_scaler_is_fitted_on_training_patients_only(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    ids = [f"P{i:02d}" for i in range(N)]
    for k in range(2):
        val = ids[k::2]
        pd.DataFrame({"train": [i for i in ids if i not in val], "val": val}).to_csv(splits / f"splits_{k}.csv")
    base_summary, base = run(tmp_path, cohort(), splits_dir=splits)
    changed = cohort()
    val0 = changed.case_id.isin(ids[0::2])
    changed.loc[val0, GENOMIC] = changed.loc[val0, GENOMIC] * 50 + 7
    _, other = run(tmp_path, changed, "changed.csv", splits_dir=splits)
    assert (base / "fold0" / "scaler.json").read_text() == (other / "fold0" / "scaler.json").read_text()
    assert (base / "fold0" / "targets.json").read_text() == (other / "fold0" / "targets.json").read_text()
    train0 = ids[1::2]
    pd.testing.assert_frame_equal(pd.read_parquet(base / "fold0" / "genomics.parquet").loc[train0],
                                  pd.read_parquet(other / "fold0" / "genomics.parquet").loc[train0])
    # those patients train fold 1, whose scaler must move
    assert (base / "fold1" / "scaler.json").read_text() != (other / "fold1" / "scaler.json").read_text()
    scaler = json.loads((base / "fold0" / "scaler.json").read_text())
    first = cohort().drop_duplicates("case_id").set_index("case_id").loc[train0, scaler["columns"]]
    assert scaler["mean"] == pytest.approx(first.mean().tolist())
    expected_std = first.std(ddof=0).replace(0, 1.0)
    assert scaler["std"] == pytest.approx(expected_std.tolist())
    assert base_summary["folds"] == [{"train": 12, "val": 12}] * 2


def test_targets_pick_the_risk_column_and_never_leave_a_group_empty(tmp_path):
    summary, out = run(tmp_path, cohort(), settings={"ttest_alpha": 0.01})
    for k in range(3):
        targets = json.loads((out / f"fold{k}" / "targets.json").read_text())["groups"]
        assert "G1_rnaseq" in targets["A"]  # tracks survival time
        assert "G3_mut" not in targets["A"]  # constant: p = 1
        assert len(targets["B"]) >= 1
    pvalues = welch_pvalues(np.zeros((6, 1)), np.array([1, 1, 1, 0, 0, 0], bool), np.array([0, 0, 0, 1, 1, 1], bool))
    assert pvalues.tolist() == [1.0]
