"""Issue 13, round two of hostile inputs: no silent wrong results, no crash, no nonsense work.

- one slide file under two slide ids is refused (same path, another spelling, a symbolic or a
  hard link), naming both ids and the file, unless ``allow_shared_slide_files`` says it is meant;
- a repeated column name in a cohort table, a signatures table or a sample sheet is an error
  (pandas would rename the second copy NAME.1 and a gene would silently leave its group);
- a symlink loop as a slide path is a failed slide, not a crashed tissue job;
- physical settings out of range are refused by the schema, and a slide whose grid holds more
  than ``tissue.max_patches_per_slide`` patches fails naming the count and the settings;
- an unknown ``features.encoder`` stops Snakemake at parse time, before any job.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import zarr
from workflow_util import snakemake, tiny_demo_config

from ghanet_pipeline import cli, config
from ghanet_pipeline.demo import cohort as demo
from ghanet_pipeline.features.encoder_names import (
    UnknownEncoderError,
    check_encoder_name,
)
from ghanet_pipeline.genomics.groups import GroupDefinitionError, read_definition
from ghanet_pipeline.genomics.preprocess import GenomicsError, read_cohort_table
from ghanet_pipeline.io.sheet import SampleSheetError, read_samples
from ghanet_pipeline.slides import synthetic

TISSUE = {"target_mpp": 2.0, "patch_size": 64}  # small patches: ~12 on the slide below


def write_small_slide(path: Path, seed: int = 1) -> Path:
    """A 2048 x 1536 demo-like H&E slide at 0.5 um/px, 3 levels."""
    rgb, _ = demo.render_slide(demo.SlideRecipe(path.stem, 2048, 1536, 0.3, (seed, 1)))
    synthetic.write_aperio_svs_from_array(path, rgb, mpp=0.5, levels=3, downsample=4, tile=64)
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return write_small_slide(tmp_path_factory.mktemp("slide") / "slide.svs")


def tissue(slide_id: str, path: Path, out: Path, settings: dict, *extra: str) -> tuple[int, dict]:
    rc = cli.main(["tissue", "--slide-id", slide_id, "--slide-path", str(path), "--out-dir", str(out),
                   "--settings", json.dumps(settings), *extra])  # fmt: skip
    status = out / "status" / f"{slide_id}.json"
    return rc, json.loads(status.read_text()) if status.is_file() else {}


# ----------------------------------------------------------------------------- one file, two ids


def _sheet(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = folder / "samples.csv"
    path.write_text("slide_id,case_id,path\n" + "".join(f"{s},{c},{p}\n" for s, c, p in rows))
    return path


@pytest.mark.parametrize("spelling", ["same", "absolute", "dotted", "symlink", "hardlink"])
def test_one_slide_file_under_two_ids_is_refused(tmp_path, slide, spelling):
    local = tmp_path / "slides" / "a.svs"
    local.parent.mkdir()
    local.write_bytes(slide.read_bytes())
    other = {
        "same": "slides/a.svs",
        "absolute": str(local),
        "dotted": "slides/../slides/./a.svs",
        "symlink": "slides/link.svs",
        "hardlink": "slides/hard.svs",
    }[spelling]
    if spelling == "symlink":
        (tmp_path / "slides" / "link.svs").symlink_to(local)
    if spelling == "hardlink":
        os.link(local, tmp_path / "slides" / "hard.svs")
    sheet = _sheet(tmp_path, [("S-1", "P-1", "slides/a.svs"), ("S-2", "P-2", other), ("S-3", "P-2", "slides/missing.svs")])
    with pytest.raises(SampleSheetError) as err:
        read_samples(sheet)
    text = str(err.value)
    assert "'S-1'" in text and "'S-2'" in text and "a.svs" in text and str(sheet) in text
    assert "S-3" not in text  # a missing file is the tissue stage's to report
    assert "allow_shared_slide_files: true" in text and "List each slide file once" in text
    table = read_samples(sheet, allow_shared_files=True)  # the user says it is meant
    assert list(table.slide_id) == ["S-1", "S-2", "S-3"]


def test_stages_that_read_the_sheet_refuse_a_shared_file_unless_told(tmp_path, slide, capsys):
    sheet = _sheet(tmp_path, [("S-1", "P-1", str(slide)), ("S-2", "P-2", str(slide))])
    infer = ["infer", "--models-dir", str(tmp_path / "models"), "--samples", str(sheet),
             "--features-dir", str(tmp_path / "features"), "--out-dir", str(tmp_path / "out")]  # fmt: skip
    assert cli.main(infer) == 1
    assert "same file" in capsys.readouterr().err
    assert cli.main([*infer, "--allow-shared-slide-files"]) == 1  # now it stops later: no models there
    assert "same file" not in capsys.readouterr().err
    parsed = cli.build_parser("genomics").parse_args(
        ["--cohort-table", "c.csv", "--out-dir", "o", "--allow-shared-slide-files"]
    )
    assert parsed.allow_shared_slide_files is True


def test_shared_slide_file_stops_snakemake_at_parse_time(tmp_path, slide):
    (tmp_path / "a.svs").symlink_to(slide)
    _sheet(tmp_path, [("S-1", "P-1", str(slide)), ("S-2", "P-2", "a.svs")])
    tiny_demo_config(tmp_path, demo={"enabled": False}, samples="samples.csv")
    result = snakemake(tmp_path, "-n", "--cores", "1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "'S-1'" in output and "'S-2'" in output and "allow_shared_slide_files" in output
    assert not (tmp_path / "results").exists()

    # meant: both ids are planned, and the jobs that read the sheet again are told so too
    (tmp_path / "cohort.csv").write_text("case_id,slide_id,survival_months,censorship,A_rnaseq\n")
    tiny_demo_config(tmp_path, demo={"enabled": False}, samples="samples.csv", cohort_table="cohort.csv",
                     allow_shared_slide_files=True)  # fmt: skip
    planned = snakemake(tmp_path, "-n", "-p", "--cores", "1").stdout
    assert re.search(r"^tissue\s+2\s*$", planned, flags=re.M), planned[-3000:]
    commands = [line for line in planned.splitlines() if "ghanet genomics" in line or "ghanet infer" in line]
    assert len(commands) == 2 and all("--allow-shared-slide-files" in c for c in commands), commands


# ----------------------------------------------------------------------------- repeated column names


def test_repeated_column_in_the_cohort_table_is_an_error(tmp_path, capsys):
    table = tmp_path / "cohort.csv"
    table.write_text(
        "case_id,slide_id,survival_months,censorship,AAA_rnaseq,BBB_rnaseq,AAA_rnaseq,CCC_cnv\n"
        + "".join(f"P-{i},S-{i},{10 + i},{i % 2},{i},{2 * i},{3 * i},{i % 3}\n" for i in range(12))
    )
    with pytest.raises(GenomicsError, match=r"appear twice in the header: AAA_rnaseq") as err:
        read_cohort_table(table)
    assert str(table) in str(err.value)
    # the stage itself: exit 1, nothing written, the log names the column and the file
    out = tmp_path / "genomics"
    assert cli.main(["genomics", "--cohort-table", str(table), "--out-dir", str(out)]) == 1
    assert not out.exists()
    log = capsys.readouterr().err
    assert "AAA_rnaseq" in log and str(table) in log


def test_repeated_column_in_a_tsv_cohort_table_and_in_signatures(tmp_path):
    table = tmp_path / "cohort.tsv"
    table.write_text("case_id\tslide_id\tsurvival_months\tcensorship\tX_mut\t X_mut \nP-1\tS-1\t3\t0\t1\t0\n")
    with pytest.raises(GenomicsError, match="X_mut"):
        read_cohort_table(table)
    signatures = tmp_path / "signatures.csv"
    signatures.write_text("Tumor Suppressor,Oncogenes,Tumor Suppressor\nTP53,MYC,PTEN\n")
    with pytest.raises(GroupDefinitionError, match="defined twice: Tumor Suppressor"):
        read_definition(signatures)


def test_repeated_column_in_the_sample_sheet_is_an_error(tmp_path):
    sheet = tmp_path / "samples.csv"
    sheet.write_text("slide_id,case_id,path,path\nS-1,P-1,a.svs,b.svs\n")
    with pytest.raises(SampleSheetError, match="'path' appear more than once"):
        read_samples(sheet)


def test_trailing_separators_are_not_repeated_columns(tmp_path):
    sheet = tmp_path / "samples.csv"
    sheet.write_text("slide_id,case_id,path,,\nS-1,P-1,a.svs,,\n")
    assert list(read_samples(sheet).slide_id) == ["S-1"]


# ----------------------------------------------------------------------------- symlink loop


def test_symlink_loop_as_slide_path_is_a_failed_slide(tmp_path):
    a, b = tmp_path / "a.svs", tmp_path / "b.svs"
    a.symlink_to(b)
    b.symlink_to(a)
    out = tmp_path / "out"
    rc, status = tissue("looped", a, out, TISSUE)
    assert rc == 0, "non-strict: the slide is recorded as failed and the job succeeds"
    assert status["status"] == "failed" and status["n_patches"] == 0
    assert "symlink loop" in status["reason"] and str(a) in status["reason"]
    attrs = dict(zarr.open_group(str(out / "tiles" / "looped.zarr"), mode="r").attrs)
    assert attrs["status"] == "failed" and attrs["source_path"] == str(a)
    assert (out / "qc" / "looped.png").is_file()
    # strict: a non-zero exit and nothing written for the slide
    strict_out = tmp_path / "strict"
    rc, status = tissue("looped", a, strict_out, TISSUE, "--strict")
    assert rc == 1 and not status


# ----------------------------------------------------------------------------- nonsense settings


@pytest.mark.parametrize(
    "section, key, value, bound",
    [
        ("tissue", "target_mpp", 1e-9, "0.05"),
        ("tissue", "target_mpp", 100.0, "16"),
        ("tissue", "seg_mpp", 0.1, "1"),
        ("tissue", "patch_size", 100_000, "4096"),
        ("tissue", "overlap", 0.99, "0.9"),
        ("tissue", "default_slide_mpp", 1e-6, "0.02"),
        ("tissue", "median_blur_um", 1e7, "2000"),
        ("tissue", "max_patches_per_slide", 0, "1"),
    ],
)
def test_physical_settings_out_of_range_are_refused(section, key, value, bound):
    with pytest.raises(config.ConfigError) as err:
        config.build({section: {key: value}})
    assert f"'{section}.{key}'" in str(err.value) and bound in str(err.value)


def test_every_bounded_setting_says_why():
    tissue = config.load_schema("config")["properties"]["tissue"]["properties"]
    for key in ("target_mpp", "patch_size", "overlap", "seg_mpp", "default_slide_mpp", "median_blur_um", "close_um",
                "max_patches_per_slide"):  # fmt: skip
        assert len(tissue[key].get("description", "")) > 40, key
    assert config.build({}).tissue.max_patches_per_slide == 500_000


def test_too_many_patches_fail_the_slide_naming_count_and_settings(tmp_path, slide):
    rc, ok = tissue("s", slide, tmp_path / "ok", TISSUE)
    assert rc == 0 and ok["status"] == "ok" and ok["n_patches"] > 3
    n = ok["n_patches"]
    rc, status = tissue("s", slide, tmp_path / "at-limit", {**TISSUE, "max_patches_per_slide": n})
    assert rc == 0 and status["status"] == "ok" and status["n_patches"] == n
    rc, status = tissue("s", slide, tmp_path / "capped", {**TISSUE, "max_patches_per_slide": n - 1})
    assert rc == 0 and status["status"] == "failed" and status["n_patches"] == 0
    reason = status["reason"]
    assert f"{n} patches, over the limit of {n - 1}" in reason and str(slide) in reason
    for words in ("tissue.target_mpp 2", "patch_size 64", "overlap 0", "raise tissue.max_patches_per_slide"):
        assert words in reason, (words, reason)
    # a grid far beyond the limit fails before it is computed, with an estimate
    fine = {"target_mpp": 0.05, "patch_size": 16, "overlap": 0.9, "max_patches_per_slide": 1000}
    rc, status = tissue("s", slide, tmp_path / "fine", fine)
    assert rc == 0 and status["status"] == "failed" and "about" in status["reason"]
    assert status["seconds"] < 30
    rc, status = tissue("s", slide, tmp_path / "strict", fine, "--strict")
    assert rc == 1


# ----------------------------------------------------------------------------- encoder names


def test_registry_and_hf_hub_names_are_checked_without_torch():
    code = (
        "import sys; from ghanet_pipeline.features.encoder_names import check_encoder_name as c; "
        "c('efficientnet_lite0'); c('resnet50_trunc'); c('hf-hub:MahmoodLab/UNI'); "
        "print('torch' in sys.modules, 'timm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_unknown_encoder_names_are_refused_listing_the_known_ones():
    assert check_encoder_name("vit_small_patch16_224.augreg_in21k")  # timm knows it: accepted
    with pytest.raises(UnknownEncoderError) as err:
        check_encoder_name("efficientnet_lite")
    text = str(err.value)
    assert "'efficientnet_lite'" in text and "efficientnet_lite0, resnet50_trunc" in text
    assert "Did you mean 'efficientnet_lite0'" in text and "hf-hub:org/name" in text


def test_unknown_encoder_stops_snakemake_at_parse_time(tmp_path):
    tiny_demo_config(tmp_path, features={"encoder": "nonexistent_net"})
    result = snakemake(tmp_path, "-n", "--cores", "1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'nonexistent_net' is unknown" in output and "efficientnet_lite0, resnet50_trunc" in output
    assert "rule tissue" not in output and not (tmp_path / "results").exists()


def test_a_damaged_status_record_is_a_failed_slide_naming_the_file(tmp_path):
    from ghanet_pipeline.contracts.tiles import SlideStatus
    from ghanet_pipeline.io import manifest
    from ghanet_pipeline.io.layout import Layout

    layout = Layout(tmp_path)
    layout.status_dir.mkdir()
    layout.status("OK1").write_text(json.dumps(SlideStatus(slide_id="OK1", status="ok", n_patches=3).to_attrs()))
    layout.status("CUT").write_text('{"slide_id": "CUT", "sta')  # cut short by a full disk
    layout.status("ODD").write_text('{"status": "ok"}')  # not written by the tissue stage
    records = {r.slide_id: r for r in manifest.gather(tmp_path)}
    assert records["OK1"].ok and records["OK1"].n_patches == 3
    for slide_id in ("CUT", "ODD"):
        assert not records[slide_id].ok
        assert str(layout.status(slide_id)) in records[slide_id].reason and "rerun" in records[slide_id].reason
    rows = manifest.to_csv(list(records.values())).splitlines()
    assert rows[0].split(",") == list(manifest.COLUMNS) and len(rows) == 4
