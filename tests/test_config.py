"""The config schema is the one source of truth, and a typo is an error naming the key."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pandas as pd
import pytest

from ghanet_pipeline import config
from ghanet_pipeline.io.sheet import SampleSheetError, parse_samples


def test_shipped_config_is_valid_and_documented(repo_root):
    cfg = config.load(repo_root / "config.yaml")
    assert cfg.tissue.patch_size == 256 and cfg.features.encoder == "efficientnet_lite0"
    # Every key of config.yaml carries a comment, so the demo config explains itself.
    for line in (repo_root / "config.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped and not stripped.endswith(":"):
            assert "#" in line, f"config.yaml key without a comment: {line!r}"


def test_dataclasses_follow_the_schema():
    schema = config.load_schema("config")
    for name, cls in config.SECTIONS.items():
        keys = set(schema["properties"][name]["properties"])
        assert {f.name for f in dataclasses.fields(cls)} == keys, name
    top = {f.name for f in dataclasses.fields(config.Config)}
    assert top == set(schema["properties"])


def test_defaults_come_from_the_schema():
    cfg = config.build({})
    assert cfg.output_dir == "results"
    assert cfg.tissue.target_mpp == 0.5
    assert cfg.train.models == ("ghanet", "ghanet_norecon", "abmil", "snn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.tissue.patch_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"tissue": {"patch_sise": 256}}, "patch_sise"),
        ({"outptu_dir": "x"}, "outptu_dir"),
        ({"features": {"batch_size": "big"}}, "features.batch_size"),
        ({"train": {"models": ["transformer"]}}, "train.models.0"),
    ],
)
def test_bad_keys_are_named(raw, key):
    with pytest.raises(config.ConfigError) as err:
        config.build(raw)
    assert key in str(err.value)


def test_stage_settings_from_json_validates_section():
    s = config.stage_settings("tissue", None, json.dumps({"patch_size": 128}))
    assert s.patch_size == 128 and s.target_mpp == 0.5
    with pytest.raises(config.ConfigError, match="patch_sise"):
        config.stage_settings("tissue", None, json.dumps({"patch_sise": 128}))


def test_yaml_tags_are_refused(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("output_dir: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(config.ConfigError, match="plain YAML"):
        config.load(bad)


def test_sample_sheet_tolerates_bom_and_crlf_and_resolves_paths(tmp_path):
    text = "\ufeffslide_id,case_id,path,mpp\r\nS1,C1,slides/a b é.svs,0.25\r\nS2,C1,/abs/b.svs,\r\n"
    table = parse_samples(text.encode("utf-8").decode("utf-8-sig").replace("\r\n", "\n"), base_dir=tmp_path)
    assert list(table.slide_id) == ["S1", "S2"]
    assert table.path[0] == str(tmp_path / "slides/a b é.svs") and table.path[1] == "/abs/b.svs"
    assert table.mpp[0] == 0.25 and pd.isna(table.mpp[1])


@pytest.mark.parametrize(
    "rows, message",
    [
        ("../evil,C1,a.svs", "not allowed"),
        ("/etc/passwd,C1,a.svs", "not allowed"),
        ("S1,C1,a.svs\nS1,C2,b.svs", "duplicate slide_id"),
        ("S1,,a.svs", "empty case_id"),
    ],
)
def test_sample_sheet_errors_name_the_row(rows, message):
    with pytest.raises(SampleSheetError, match=message):
        parse_samples("slide_id,case_id,path\n" + rows + "\n")


def test_cli_help_lists_every_stage():
    out = subprocess.run(
        [sys.executable, "-m", "ghanet_pipeline", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for stage in ("demo-cohort", "tissue", "features", "genomics", "train", "infer", "report", "export-clam"):
        assert stage in out
