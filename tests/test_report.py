"""ghanet report: one self-contained HTML page of whatever a run folder holds."""

from __future__ import annotations

import base64
import html
import json
import re

import ghanet_rundir as rd
import pandas as pd
import pytest

from ghanet_pipeline import cli
from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.io import safe_text
from ghanet_pipeline.report import html as report
from ghanet_pipeline.report import readers
from ghanet_pipeline.survival import km

SETTINGS = stage_settings("report", None, json.dumps({"max_heatmaps": 2}))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """A run folder with slides (one failed), models, held-out predictions, inference and benchmarks."""
    return rd.inferred_run(tmp_path_factory)


@pytest.fixture(scope="module")
def full_html(full_run) -> str:
    config = {"output_dir": str(full_run.root), "samples": "<script>alert(1)</script>.csv",
              "features": {"encoder": rd.ENCODER}, "train": {"models": ["ghanet"], "epochs": 2}}
    code = cli.main(["report", "--out-dir", str(full_run.root), "--run-config", json.dumps(config),
                     "--settings", json.dumps({"max_heatmaps": 2})])
    assert code == 0
    return (full_run.root / "report" / "index.html").read_text(encoding="utf-8")


def section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"no section {anchor}"
    return match.group(1)


def test_report_lists_the_failed_slide_with_its_reason(full_html):
    cohort = section(full_html, "cohort")
    failed = re.search(r'<table class="failed-slides">(.*?)</table>', cohort, re.S).group(1)
    assert "S-only-failed" in failed and "S-failed-of-P3" in failed
    assert html.escape(rd.FAILED_REASON) in failed
    assert "<b>at all</b>" not in full_html  # the reason's markup is shown, not rendered
    assert "S-single" not in failed
    counts = re.sub(r"<[^>]+>", "", re.search(r'<p class="counts">(.*?)</p>', cohort).group(1))
    assert counts == f"{len(rd.SLIDES)} slides: 6 ok, 2 failed."


def test_user_strings_are_escaped_everywhere(full_html):
    assert "<script>" not in full_html
    assert html.escape(rd.HTML_CASE) in full_html  # the case id from predictions, as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.csv" in full_html  # a config value
    assert "'=cmd|" not in full_html and "&#x27;=cmd|&#x27; /C calc&#x27;!A0" in full_html


def test_report_is_self_contained(full_html):
    sources = re.findall(r'src="([^"]*)"', full_html)
    magic = {"data:image/png;base64,": b"\x89PNG\r\n\x1a\n", "data:image/jpeg;base64,": b"\xff\xd8\xff"}
    assert sources
    for s in sources:
        prefix = s.split(",", 1)[0] + ","
        assert prefix in magic, s[:40]
        assert base64.b64decode(s.split(",", 1)[1]).startswith(magic[prefix])
    assert "http://" not in full_html and "https://" not in full_html
    assert "<link" not in full_html and "<script" not in full_html


def test_cv_table_km_heatmaps_and_timings_come_from_the_run(full_run, full_html):
    summary = json.loads((full_run.models_dir / "ghanet" / "summary.json").read_text())
    cv = section(full_html, "cv")
    assert f"{summary['cindex_final_mean']:.3f} ± {summary['cindex_final_std']:.3f}" in cv
    assert f"{summary['cindex_best_mean_optimistic']:.3f} ± {summary['cindex_best_std_optimistic']:.3f}" in cv
    assert "optimistic" in cv and "final" in cv

    km_html = section(full_html, "km")
    assert km_html.count("data:image/png") == 1
    pooled, notes = readers.held_out_groups(full_run.models_dir / "ghanet")
    assert len(pooled) == 60 and all("training median risk from result.json" in n for n in notes)
    events = 1 - pooled["censorship"].to_numpy()
    p = km.logrank_p(pooled["survival_months"].to_numpy(float), events, pooled["risk_group"].to_numpy())
    assert f"log-rank p = {p:.3g}" in km_html

    heat = section(full_html, "heatmaps")
    assert heat.count("<h3>") == 2  # max_heatmaps
    assert "2 of 6 slides" in heat

    timings = section(full_html, "timings")
    assert "tissue" in timings and str(len(rd.SLIDES)) in timings
    params = section(full_html, "parameters")
    assert rd.ENCODER in params and "0" * 64 in params


def test_held_out_split_falls_back_to_the_val_median_and_says_so(full_run, tmp_path):
    import shutil

    fold = tmp_path / "m" / "fold0"
    fold.mkdir(parents=True)
    shutil.copy(full_run.models_dir / "ghanet" / "fold0" / "predictions_val.csv", fold)
    pooled, notes = readers.held_out_groups(tmp_path / "m")
    assert "median of its held-out risks" in notes[0]
    assert (pooled["risk_group"] == "high").sum() == (pooled["risk"] > pooled["risk"].median()).sum()


def test_held_out_split_reads_the_training_median_from_result_json(full_run, tmp_path):
    import shutil

    fold = tmp_path / "m" / "fold0"
    fold.mkdir(parents=True)
    shutil.copy(full_run.models_dir / "ghanet" / "fold0" / "predictions_val.csv", fold)
    risks = pd.read_csv(fold / "predictions_val.csv")["risk"]
    threshold = float(risks.quantile(0.8))  # not the val median: the split must follow result.json
    (fold / "result.json").write_text(json.dumps({"train_median_risk": threshold}))
    pooled, notes = readers.held_out_groups(tmp_path / "m")  # no checkpoint in the folder at all
    assert "training median risk from result.json" in notes[0] and f"{threshold:.4g}" in notes[0]
    assert pooled["risk_group"].tolist() == ["high" if r > threshold else "low" for r in pooled["risk"]]
    assert (pooled["risk_group"] == "high").sum() < (pooled["risk"] > pooled["risk"].median()).sum()


def test_slide_status_falls_back_to_the_manifest(full_run, tmp_path):
    from ghanet_pipeline.io import manifest

    records = manifest.gather(full_run.root)
    (tmp_path / "manifest.csv").write_text(manifest.to_csv(records))
    frame = readers.read_slide_status(tmp_path)
    assert frame["slide_id"].tolist() == [r.slide_id for r in records] == sorted(rd.SLIDES)
    assert frame["status"].tolist() == [r.status for r in records]
    assert list(frame.columns) == list(manifest.COLUMNS)
    from_status = readers.read_slide_status(full_run.root)
    assert from_status["slide_id"].tolist() == frame["slide_id"].tolist()
    assert from_status.loc[from_status.status != "ok", "reason"].tolist() == [rd.FAILED_REASON] * 2


def test_empty_run_says_what_is_absent(tmp_path):
    page = report.build_report(tmp_path, SETTINGS, None)
    assert "no slides were processed" in page
    assert "No models trained in this run" in page
    assert "No predictions.csv" in page
    assert "No Snakemake benchmark files" in page
    assert "No genomics in this run" in page


def test_a_broken_input_only_breaks_its_own_section(full_run, tmp_path):
    import shutil

    shutil.copytree(full_run.root / "status", tmp_path / "status")
    (tmp_path / "models" / "ghanet").mkdir(parents=True)
    (tmp_path / "models" / "ghanet" / "summary.json").write_text("{not json")
    page = report.build_report(tmp_path, SETTINGS, None)
    assert "could not be built" in page and "S-only-failed" in page


def test_safe_text_neutralises_formulas_but_not_numbers():
    assert safe_text.csv_cell("=1+1") == "'=1+1"
    for start in "+-@":
        assert safe_text.csv_cell(start + "x") == "'" + start + "x"
    assert safe_text.csv_cell("P1") == "P1" and safe_text.csv_cell(-2.5) == -2.5
    frame = safe_text.neutralise_frame(pd.DataFrame({"case_id": ["=A1", "ok"], "risk": [-1.0, 2.0]}))
    assert frame.case_id.tolist() == ["'=A1", "ok"] and frame.risk.tolist() == [-1.0, 2.0]
    assert safe_text.html("<a href='x'>&</a>") == "&lt;a href=&#x27;x&#x27;&gt;&amp;&lt;/a&gt;"


def test_predictions_say_where_the_models_came_from(full_run):
    own = section(report.build_report(full_run.root, SETTINGS, {"infer": {"model": "ghanet", "models_dir": None}}),
                  "predictions")
    assert "in-sample" in own
    other = section(report.build_report(full_run.root, SETTINGS, {"infer": {"model": "ghanet",
                                                                             "models_dir": "/earlier/models"}}),
                    "predictions")
    assert "from an earlier run: /earlier/models" in other and "in-sample" not in other


def test_report_lists_only_what_the_run_made(full_run, tmp_path):
    """Folders that sit in the output folder but that this run's config did not make stay out."""
    import shutil

    root = tmp_path / "run"
    shutil.copytree(full_run.root, root)
    (root / "models" / "mymodel" / "fold0").mkdir(parents=True)
    (root / "models" / "mymodel" / "summary.json").write_text(json.dumps({"cindex_final_mean": 0.99}))
    (root / "status" / "other.json").write_text(json.dumps({"slide_id": "other", "status": "ok"}))
    (root / "qc").mkdir(exist_ok=True)
    (root / "qc" / "other.png").write_bytes(b"not shown")
    config = {"output_dir": str(root), "samples": str(full_run.samples_csv), "train": {"models": ["ghanet"]}}
    assert cli.main(["report", "--out-dir", str(root), "--run-config", json.dumps(config)]) == 0
    page = (root / "report" / "index.html").read_text(encoding="utf-8")
    assert "mymodel" not in page and "0.99" not in page
    assert ">other<" not in page and "other.png" not in page
    assert "S-single" in section(page, "cohort") and "ghanet" in section(page, "cv")
