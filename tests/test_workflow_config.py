"""The workflow's front door: the default profile loads, `--config` overrides mean what a configfile
means, and a genomics-only table runs with the default `train.models`."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from test_genomics_inputs import cohort, write_signatures
from workflow_util import snakemake, tiny_demo_config


def _dry_run_shell(stdout: str, command: str) -> list[str]:
    """Every planned shell command that starts with ``command`` (printshellcmds is on in the profile)."""
    lines = (line.strip().removeprefix("Shell command:").strip() for line in stdout.splitlines())
    return [line for line in lines if line.startswith(command)]


def _run_config(stdout: str) -> dict:
    """The effective config, as the report rule receives it (``--run-config JSON``)."""
    (line,) = _dry_run_shell(stdout, "ghanet report")
    words = shlex.split(line)
    return json.loads(words[words.index("--run-config") + 1])


def test_plain_snakemake_uses_the_default_profile(tmp_path):
    tiny_demo_config(tmp_path)
    result = snakemake(tmp_path, "-n")
    assert "Using workflow specific profile" in result.stdout + result.stderr
    assert re.search(r"profiles/default\b", result.stdout + result.stderr)
    # The profile's printshellcmds is what makes the shell commands appear in a dry run.
    assert _dry_run_shell(result.stdout, "ghanet tissue")


def test_config_overrides_are_typed_like_a_configfile(tmp_path):
    tiny_demo_config(tmp_path)
    overrides = ["samples=null", 'demo={"enabled": false}', 'tissue={"patch_size": 512, "target_mpp": 0.25}',
                 'train={"models": [snn], "epochs": 3}', "strict=true", 'infer={"fold": null}',
                 'features={"slides_per_job": 7, "shard_megabytes": 10}']
    from_cli = _run_config(snakemake(tmp_path, "-n", "--config", *overrides).stdout)

    same_file = tmp_path / "as_file"
    same_file.mkdir()
    tiny_demo_config(same_file, samples=None, demo={"enabled": False}, strict=True, infer={"fold": None},
                     tissue={"patch_size": 512, "target_mpp": 0.25}, train={"models": ["snn"], "epochs": 3},
                     features={"slides_per_job": 7, "shard_megabytes": 10})
    from_file = _run_config(snakemake(same_file, "-n").stdout)

    assert from_cli == from_file
    assert from_cli["samples"] is None and from_cli["demo"]["enabled"] is False and from_cli["strict"] is True
    assert from_cli["tissue"]["patch_size"] == 512 and from_cli["tissue"]["target_mpp"] == 0.25
    assert from_cli["train"]["models"] == ["snn"] and from_cli["train"]["epochs"] == 3
    assert from_cli["infer"]["fold"] is None
    assert from_cli["features"]["slides_per_job"] == 7 and from_cli["features"]["shard_megabytes"] == 10


@pytest.mark.parametrize("given, expected", [("7", 7), (7, 7), ("auto", "auto"), ("bogus", "bogus")])
def test_an_either_or_setting_takes_the_alternative_its_value_fits(given, expected):
    """features.slides_per_job is an integer or "auto": `--config` strings become the integer when
    they are one; anything else is left for validation to refuse."""
    from ghanet_pipeline.config import ConfigError, coerce_overrides, validate

    coerced = coerce_overrides({"features": {"slides_per_job": given}})
    assert coerced["features"]["slides_per_job"] == expected
    if expected == "bogus":
        with pytest.raises(ConfigError, match="slides_per_job"):
            validate(coerced)


@pytest.mark.parametrize("override, named", [
    ('tissue={"patch_size": "big"}', "tissue.patch_size"),
    ("strict=maybe", "strict"),
])
def test_a_config_override_that_cannot_be_typed_names_key_and_type(tmp_path, override, named):
    tiny_demo_config(tmp_path)
    result = snakemake(tmp_path, "-n", "--config", override, check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert named in log and ("integer" in log or "boolean" in log), log[-2000:]


def _genomics_only(tmp_path, one_job_per: str = "fold"):
    table = tmp_path / "cohort.csv"
    cohort().to_csv(table, index=False)
    tiny_demo_config(tmp_path, demo={"enabled": False}, samples=None, cohort_table=str(table),
                     signatures=str(write_signatures(tmp_path)), genomics={"n_folds": 3, "n_bins": 2},
                     train={"epochs": 1, "grad_accum": 4, "models": ["ghanet", "ghanet_norecon", "abmil", "snn"],
                            "one_job_per": one_job_per})


def test_genomics_only_table_with_default_models_skips_slide_models_once(tmp_path):
    _genomics_only(tmp_path)
    result = snakemake(tmp_path, "-n", "--until", "genomics")
    assert "skipping the slide models ghanet, ghanet_norecon, abmil" in result.stdout + result.stderr
    assert "genomics" in result.stdout and "train_fold" not in result.stdout

    result = snakemake(tmp_path, "-n")
    planned = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", result.stdout, flags=re.M))
    assert planned["train_fold"] == "3" and planned["train"] == "1"  # snn only: 3 folds, one summary
    assert "tissue" not in planned and "infer" not in planned


def test_slide_model_asked_for_without_slides_fails_clearly(tmp_path):
    _genomics_only(tmp_path)
    result = snakemake(tmp_path, "-n", "results/models/abmil/fold0/result.json", check=False)
    assert result.returncode != 0
    assert "model abmil needs slides but 'samples' is empty or unset" in result.stdout + result.stderr


@pytest.mark.slow
def test_until_train_ends_with_each_model_summary(tmp_path):
    _genomics_only(tmp_path)
    snakemake(tmp_path, "--cores", "2", "--until", "train")
    summary = json.loads((tmp_path / "results" / "models" / "snn" / "summary.json").read_text())
    assert summary["folds"] == [0, 1, 2]
    assert not (tmp_path / "results" / "report").exists(), "--until train stops before the report"


@pytest.mark.slow
def test_one_training_job_per_model_and_a_rerun_keeps_the_finished_folds(tmp_path):
    """train.one_job_per: model: one train_model job trains the model's 3 folds in one process; with
    one fold's result deleted (as after a crash), the rerun trains that fold only."""
    _genomics_only(tmp_path, one_job_per="model")
    planned = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", snakemake(tmp_path, "-n").stdout, flags=re.M))
    assert planned["train_model"] == "1" and "train_fold" not in planned  # snn: one job, not 3

    snakemake(tmp_path, "--cores", "1", "--until", "train")
    folds = tmp_path / "results" / "models" / "snn"
    results = {k: folds / f"fold{k}" / "result.json" for k in range(3)}
    first = {k: p.read_bytes() for k, p in results.items()}  # each holds its own run time: a retrain changes it
    assert json.loads((folds / "summary.json").read_text())["folds"] == [0, 1, 2]

    results[1].unlink()  # as after a crash in fold 1: neither its result nor the model's summary
    (folds / "summary.json").unlink()
    snakemake(tmp_path, "--cores", "1", "--until", "train")
    again = {k: p.read_bytes() for k, p in results.items()}
    assert again[0] == first[0] and again[2] == first[2]
    assert json.loads(again[1])["cindex_final"] == json.loads(first[1])["cindex_final"]  # same seed, same fold
    job_log = (tmp_path / "results" / "logs" / "train" / "snn.log").read_text()
    assert job_log.count("complete and current, kept") == 2 and "no result.json; training" in job_log
