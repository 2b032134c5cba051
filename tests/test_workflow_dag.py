"""The whole DAG shows in a dry run, and a config typo stops it before any job runs."""

from __future__ import annotations

import re

import yaml
from workflow_util import snakemake, tiny_demo_config


def _job_counts(stdout: str) -> dict[str, int]:
    counts = {}
    for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", stdout, flags=re.M):
        counts[rule] = int(n)
    return counts


def test_dry_run_shows_every_stage(tmp_path):
    tiny_demo_config(tmp_path)
    out = snakemake(tmp_path, "-n", "--cores", "2").stdout
    counts = _job_counts(out)
    from ghanet_pipeline.demo import cohort as demo

    n_slides = len(demo.plan(6, 3, tmp_path / "demo_data"))
    assert counts["demo_cohort"] == 1
    assert counts["tissue"] == n_slides and counts["features"] == n_slides
    assert counts["genomics"] == 1
    assert counts["train_fold"] == 2 * 2 and counts["train"] == 2  # 2 models x 2 folds, a summary each
    assert counts["infer"] == 1 and counts["report"] == 1
    assert not (tmp_path / "demo_data").exists(), "a dry run must not write anything"


def test_config_typo_stops_before_any_job(tmp_path):
    cfg = tiny_demo_config(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["tissue"] = {"patch_sise": 256}
    cfg.write_text(yaml.safe_dump(raw))
    result = snakemake(tmp_path, "--cores", "1", check=False)
    assert result.returncode != 0
    assert "patch_sise" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "demo_data").exists()


def test_genomics_only_run_has_no_slide_jobs(tmp_path):
    from ghanet_pipeline.demo import cohort as demo

    # a genomics table, its gene families and 5 fixed folds, as the MCAT benchmark ships them
    genomics = tmp_path / "genomics_data"
    slides = demo.plan(20, 4, genomics)
    demo.write_tables(genomics, 20, 4, 5, {slide_id: 0.0 for slide_id in slides.slide_id})
    tiny_demo_config(
        tmp_path,
        demo={"enabled": False},
        samples=None,
        cohort_table=str(genomics / "cohort.csv"),
        signatures=str(genomics / "signatures.csv"),
        splits_dir=str(genomics / "splits"),
        train={"models": ["snn"]},
    )
    counts = _job_counts(snakemake(tmp_path, "-n", "--cores", "1").stdout)
    assert counts["train_fold"] == 5 and counts["genomics"] == 1
    assert "tissue" not in counts and "features" not in counts and "infer" not in counts
