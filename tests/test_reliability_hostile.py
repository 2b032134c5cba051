"""Hostile inputs: sample sheets (traversal, absolute and duplicate ids, unicode and spaces in
paths, BOM/CRLF), cohort tables (huge numbers, NaN/inf) through ``ghanet genomics``, checkpoint
files that are not plain state dicts (a pickle whose ``__reduce__`` would create a file) and
YAML with tags. Formula-like ids in the report are covered by tests/test_report.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ghanet_pipeline import cli
from ghanet_pipeline.config import ConfigError, read_yaml
from ghanet_pipeline.demo import cohort as demo
from ghanet_pipeline.io.layout import Layout
from ghanet_pipeline.io.sheet import SampleSheetError, parse_samples, read_samples

HEADER = "slide_id,case_id,path,mpp\n"


# ----------------------------------------------------------------------------- sample sheets


@pytest.mark.parametrize(
    "slide_id",
    ["../../etc/passwd", "/etc/passwd", "a/b", "..", ".hidden", "x/../../y", "C:\\evil", "a\\..\\b", "", " ", "é"],
)
def test_unsafe_slide_ids_are_refused_naming_the_line(slide_id):
    text = HEADER + f"ok-1,C1,a.svs,\n{slide_id},C2,b.svs,\n"
    with pytest.raises(SampleSheetError) as err:
        parse_samples(text, base_dir="/data", source="samples.csv")
    assert "samples.csv" in str(err.value) and "line 3" in str(err.value)


def test_unsafe_id_on_the_command_line_writes_nothing(tmp_path):
    out = tmp_path / "out"
    rc = cli.main(["tissue", "--slide-id", "../../escaped", "--slide-path", "x.svs", "--out-dir", str(out)])
    assert rc == 2 and not out.exists() and not (tmp_path / "escaped.json").exists()
    with pytest.raises(ValueError):
        Layout(out).tiles("../x")


def test_duplicate_slide_ids_are_refused():
    text = HEADER + "s1,C1,a.svs,\ns2,C1,b.svs,\ns1,C2,c.svs,\n"
    with pytest.raises(SampleSheetError, match=r"duplicate slide_id\(s\): 's1'"):
        parse_samples(text)


def test_bom_crlf_and_spaces_read_like_a_clean_sheet(tmp_path):
    clean = HEADER + "s1,C1,slides/a b.svs,0.25\ns2,C2,/abs/ü.svs,\n"
    hostile = "\ufeff" + clean.replace("\n", "\r\n").replace(",", " , ").replace("slide_id", " slide_id")
    (tmp_path / "clean.csv").write_text(clean, encoding="utf-8")
    (tmp_path / "hostile.csv").write_bytes(hostile.encode("utf-8"))
    a, b = read_samples(tmp_path / "clean.csv"), read_samples(tmp_path / "hostile.csv")
    pd.testing.assert_frame_equal(a, b)
    assert list(a.slide_id) == ["s1", "s2"] and a.mpp[0] == 0.25 and pd.isna(a.mpp[1])
    assert a.path[0] == str(tmp_path / "slides" / "a b.svs") and a.path[1] == "/abs/ü.svs"


def test_latin1_sheet_is_a_clear_error(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_bytes((HEADER + "s1,C1,caf\xe9.svs,\n").encode("latin-1"))
    with pytest.raises(SampleSheetError, match="not UTF-8"):
        read_samples(path)


def test_unicode_and_spaces_in_slide_path_run_through_tissue(tmp_path, test_slides):
    folder = tmp_path / "Schnitte für Prüfung" / "二 月 slides"
    folder.mkdir(parents=True)
    slide = folder / "CMU 1 (kleine Region) ü.svs"
    shutil.copy(test_slides.cmu, slide)
    sheet = tmp_path / "samples.csv"
    sheet.write_text(HEADER + f"cmu-1,C1,{slide.relative_to(tmp_path)},\n", encoding="utf-8")
    row = read_samples(sheet).iloc[0]
    assert row.path == str(slide)
    out = tmp_path / "out dir ü"
    assert cli.main(["tissue", "--slide-id", row.slide_id, "--slide-path", row.path, "--out-dir", str(out)]) == 0
    status = json.loads((out / "status" / "cmu-1.json").read_text(encoding="utf-8"))
    assert status["status"] == "ok" and status["n_patches"] > 10 and status["path"] == str(slide)


# ----------------------------------------------------------------------------- cohort tables


def demo_cohort_table(patients: int = 30, seed: int = 3) -> pd.DataFrame:
    slides = demo.plan(patients, seed, "/nowhere")
    return demo.cohort_table(slides, demo.patient_table(patients, seed), seed)


def test_huge_nan_inf_cells_through_ghanet_genomics(tmp_path):
    table = demo_cohort_table().astype({"CDMA1_rnaseq": object, "CDMB2_rnaseq": object, "CDMC3_rnaseq": object, "survival_months": object})
    cases = list(dict.fromkeys(table.case_id))
    first = {c: table.index[table.case_id == c] for c in cases}
    table.loc[first[cases[0]], "CDMA1_rnaseq"] = "1e400"  # overflows to inf
    table.loc[first[cases[1]], "CDMA1_rnaseq"] = "-inf"
    table.loc[first[cases[2]], "CDMB2_rnaseq"] = "1e300"  # finite but absurd
    table.loc[first[cases[3]], "CDMC3_rnaseq"] = "NaN"
    table.loc[first[cases[4]], "CDMB2_rnaseq"] = "=1+1"  # formula-like text: not a number
    table.loc[first[cases[5]], "survival_months"] = "inf"
    table.loc[first[cases[6]], "survival_months"] = "1e400"
    path = tmp_path / "cohort.csv"
    table.to_csv(path, index=False)
    out = tmp_path / "genomics"
    settings = json.dumps({"n_folds": 2, "n_bins": 2})
    assert cli.main(["genomics", "--cohort-table", str(path), "--out-dir", str(out), "--settings", settings]) == 0

    report = (out / "report.txt").read_text()
    for case, column, what in [(cases[0], "CDMA1_rnaseq", "infinite"), (cases[1], "CDMA1_rnaseq", "infinite"),
                               (cases[2], "CDMB2_rnaseq", "huge"), (cases[4], "CDMB2_rnaseq", "non-numeric")]:  # fmt: skip
        line = next((s for s in report.splitlines() if column in s and what in s), "")
        assert case in line and "imputed" in line, (case, column, what, report)
    assert f"patient {cases[5]}: survival_months 'inf' is infinite" in report
    assert f"patient {cases[6]}: survival_months '1e400' is infinite" in report and "left out" in report
    patients = pd.read_csv(out / "patients.csv", dtype={"case_id": str})
    assert set(patients.case_id) == set(cases) - {cases[5], cases[6]}
    assert np.isfinite(patients.survival_months).all()
    for fold in (0, 1):
        values = pd.read_parquet(out / f"fold{fold}" / "genomics.parquet").to_numpy()
        assert np.isfinite(values).all() and np.abs(values).max() < 1e3
        scaler = json.loads((out / f"fold{fold}" / "scaler.json").read_text())
        assert np.isfinite(scaler["mean"]).all() and np.isfinite(scaler["std"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_patients"] == len(cases) - 2 and summary["problems"]


def test_unreadable_cohort_table_fails_cleanly(tmp_path):
    path = tmp_path / "cohort.csv"
    path.write_bytes(b"\x00\xff\xfe garbage \x00")
    out = tmp_path / "genomics"
    assert cli.main(["genomics", "--cohort-table", str(path), "--out-dir", str(out)]) == 1
    assert not out.exists()


# ----------------------------------------------------------------------------- checkpoints


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: what an arbitrary pickle can do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.fixture()
def hostile_checkpoint(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "checkpoint_final.pt"
    state = {"state_dict": {"w": torch.zeros(2)}, "model": "abmil", "model_config": {}, "evil": Payload(marker)}
    torch.save(state, ckpt)
    # The payload is live: an unrestricted load runs it (so the refusals below mean something).
    torch.load(ckpt, weights_only=False)
    assert marker.read_text() == "pwned"
    marker.unlink()
    return ckpt, marker


def test_checkpoint_loaders_never_unpickle_objects(hostile_checkpoint, tmp_path):
    from ghanet_pipeline.model.factory import load_checkpoint, load_fold_model
    from ghanet_pipeline.training.train import try_resume

    ckpt, marker = hostile_checkpoint
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        load_checkpoint(ckpt)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        load_fold_model(ckpt)  # what ghanet infer uses
    resume = tmp_path / "resume.pt"
    shutil.copy(ckpt, resume)
    assert try_resume(resume, "fingerprint") is None  # training starts over instead
    assert not marker.exists()


def test_infer_refuses_a_hostile_checkpoint(hostile_checkpoint, tmp_path):
    from ghanet_pipeline.inference.predict import load_models

    ckpt, marker = hostile_checkpoint
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        load_models([ckpt], "cpu")
    assert not marker.exists()


def test_encoder_weights_file_is_loaded_safely(hostile_checkpoint):
    from ghanet_pipeline.features.checkpoints import read_state_dict

    ckpt, marker = hostile_checkpoint
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|unsupported"):
        read_state_dict(ckpt)
    assert not marker.exists()


# ----------------------------------------------------------------------------- YAML


EVIL_YAML = [
    "output_dir: !!python/object/apply:os.system ['touch {marker}']\n",
    "output_dir: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
    "tissue: !!python/name:os.system\n",
    "output_dir: !custom thing\n",
]


@pytest.mark.parametrize("text", EVIL_YAML)
def test_yaml_tags_are_refused(tmp_path, text):
    marker = tmp_path / "PWNED"
    path = tmp_path / "config.yaml"
    path.write_text(text.format(marker=marker))
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(path)
    # a stage given this config exits with a clear error (code 2), nothing runs
    assert cli.main(["tissue", "--slide-id", "s", "--slide-path", "x.svs", "--out-dir", str(tmp_path / "o"), "--config", str(path)]) == 2
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_yaml_alias_bomb_is_refused(tmp_path):
    # "billion laughs": 9**9 values once expanded; validating or printing it would exhaust memory
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                                     for p, c in zip("abcdefgh", "bcdefghi")]  # fmt: skip
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="aliases"):
        read_yaml(path)
    ok = tmp_path / "anchors.yaml"  # ordinary anchors stay allowed
    ok.write_text("tissue: &t {patch_size: 128}\nfeatures: {batch_size: 8}\n")
    assert read_yaml(ok)["tissue"] == {"patch_size": 128}


@pytest.mark.parametrize("depth", [50, 5000])
def test_deeply_nested_yaml_is_a_config_error(tmp_path, depth):
    path = tmp_path / "deep.yaml"
    path.write_text("tissue: " + "[" * depth + "]" * depth + "\n")
    if depth < 100:
        assert read_yaml(path)["tissue"]
    else:
        with pytest.raises(ConfigError, match="nested too deeply|aliases"):
            read_yaml(path)
