"""``ghanet samples DIR``: a sample sheet from a folder of generated slides, then the tissue stage on it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from ghanet_pipeline.io import sheet
from ghanet_pipeline.io.layout import check_slide_id
from ghanet_pipeline.slides import discover as samples_cmd
from ghanet_pipeline.slides import synthetic

TISSUE_SETTINGS = json.dumps({"min_tissue_area_um2": 20000.0})


def _slide(path, mpp=0.5, app_mag=20, seed=0):
    """A 1536 x 1024 slide: glass with two stained tissue pieces."""
    rng = np.random.default_rng(seed)
    h, w = 1024, 1536
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.clip(240 + rng.normal(0, 2, (h, w, 3)), 0, 255)
    for cx, cy, r in ((450, 500, 300), (1100, 520, 260)):
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        rgb[inside] = np.clip(np.array([200, 110, 170]) + rng.normal(0, 18, (int(inside.sum()), 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic.write_aperio_svs_from_array(path, rgb.astype(np.uint8), mpp=mpp, app_mag=app_mag, levels=2)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Nested folders: a TCGA name, a name with spaces, a slide without mpp, a non-slide file."""
    root = tmp_path_factory.mktemp("slides")
    _slide(root / "TCGA-AB-1234-01Z-00-DX1.svs", seed=1)
    _slide(root / "site A" / "my slide (1).svs", seed=2)
    _slide(root / "site A" / "deeper" / "TCGA-ab-1234-01Z-00-DX2.svs", seed=3)  # same patient, lower case
    _slide(root / "site B" / "no_mpp.svs", mpp=None, app_mag=None, seed=4)
    (root / "site B" / "notes.txt").write_text("not a slide\n")
    (root / "site B" / "scan.bin").write_bytes(b"\x00\x01garbage" * 100)  # unknown extension, not a slide
    (root / "site B" / "cut.svs").write_bytes(b"\x00" * 64)  # a slide's name, not a slide: kept, fails in tissue
    return root


def test_recursive_sheet_ids_cases_mpp_and_notes(folder, tmp_path, caplog):
    out = tmp_path / "samples.csv"
    with caplog.at_level(logging.INFO, logger="ghanet_pipeline.slides.discover"):
        slides = samples_cmd.write_sheet(folder, out, recursive=True)
    table = sheet.read_samples(out)  # the sheet reads back through the pipeline's own reader
    rows = {r.slide_id: r for r in table.itertuples()}
    assert set(rows) == {"TCGA-AB-1234-01Z-00-DX1", "my_slide_1", "TCGA-ab-1234-01Z-00-DX2", "no_mpp", "cut"}
    for slide_id in rows:
        check_slide_id(slide_id)
    assert rows["TCGA-AB-1234-01Z-00-DX1"].case_id == "TCGA-AB-1234"
    assert rows["TCGA-ab-1234-01Z-00-DX2"].case_id == "TCGA-AB-1234"  # barcodes are upper-cased
    assert rows["my_slide_1"].case_id == "my_slide_1"
    assert (folder / "site A" / "my slide (1).svs").samefile(rows["my_slide_1"].path)
    mpp = {s.slide_id: (s.mpp, s.mpp_source) for s in slides}
    assert mpp["my_slide_1"][0] == pytest.approx(0.5) and mpp["my_slide_1"][1] == "slide_properties"
    assert mpp["no_mpp"] == (None, "")
    text = caplog.text
    assert "'my slide (1)' -> 'my_slide_1'" in text
    assert "record no microns per pixel: no_mpp" in text
    assert "notes.txt" in text and "scan.bin" in text and "skipped" in text
    assert "cut.svs has a slide's extension but OpenSlide does not recognise it" in text


def test_not_recursive_sees_only_the_top_folder(folder, tmp_path):
    slides = samples_cmd.write_sheet(folder, tmp_path / "s.csv")
    assert [s.slide_id for s in slides] == ["TCGA-AB-1234-01Z-00-DX1"]


def test_duplicate_stem_in_two_folders_is_refused_naming_both(tmp_path):
    _slide(tmp_path / "in" / "one" / "case7.svs", seed=5)
    _slide(tmp_path / "in" / "two" / "case7.svs", seed=6)
    out = tmp_path / "samples.csv"
    with pytest.raises(samples_cmd.SamplesError) as err:
        samples_cmd.write_sheet(tmp_path / "in", out, recursive=True)
    message = str(err.value)
    assert "case7" in message and str(tmp_path / "in" / "one" / "case7.svs") in message
    assert str(tmp_path / "in" / "two" / "case7.svs") in message
    assert not out.exists()


def test_case_regex_and_existing_sheet(folder, tmp_path):
    out = tmp_path / "s.csv"
    slides = samples_cmd.write_sheet(folder, out, recursive=True, case_regex=r"^(?P<case>[a-z]+)_")
    assert {s.slide_id: s.case_id for s in slides}["no_mpp"] == "no"
    with pytest.raises(samples_cmd.SamplesError, match="exists"):
        samples_cmd.write_sheet(folder, out, recursive=True)
    with pytest.raises(samples_cmd.SamplesError, match="not a valid regular expression"):
        samples_cmd.write_sheet(folder, out, recursive=True, case_regex="(", force=True)


@pytest.mark.parametrize(
    "name, expected",
    [("a b  c", "a_b_c"), ("..hidden", "hidden"), ("x..y", "x.y"), ("ümlaut+1", "umlaut_1"), ("###", "slide"), ("A" * 300, "A" * 200)],
)
def test_slide_id_from_name_is_always_valid(name, expected):
    assert samples_cmd.slide_id_from_name(name) == expected


def test_cli_sheet_then_tissue_stage_unchanged(folder, tmp_path, env_with_venv):
    out = tmp_path / "samples.csv"
    ghanet = [sys.executable, "-m", "ghanet_pipeline"]
    done = subprocess.run([*ghanet, "samples", str(folder), "--out", str(out), "--recursive"],
                          capture_output=True, text=True, env=env_with_venv, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = sheet.read_samples(out)
    results = tmp_path / "results"
    for row in table.itertuples():
        cmd = [*ghanet, "tissue", "--slide-id", row.slide_id, "--slide-path", row.path, "--out-dir", str(results),
               "--settings", TISSUE_SETTINGS]  # fmt: skip
        if row.mpp is not None and np.isfinite(row.mpp):
            cmd += ["--mpp", str(row.mpp)]
        run = subprocess.run(cmd, capture_output=True, text=True, env=env_with_venv, timeout=120)
        assert run.returncode == 0, run.stderr
    status = {p.stem: json.loads(p.read_text()) for p in (results / "status").glob("*.json")}
    assert set(status) == set(table.slide_id)
    for slide_id in ("TCGA-AB-1234-01Z-00-DX1", "my_slide_1", "TCGA-ab-1234-01Z-00-DX2"):
        assert status[slide_id]["status"] == "ok" and status[slide_id]["n_patches"] > 0, status[slide_id]
    # the slide the sheet listed without mpp fails in the tissue stage, saying what to do
    assert status["no_mpp"]["status"] == "failed" and "mpp" in status["no_mpp"]["reason"]
    assert status["cut"]["status"] == "failed" and "cut.svs" in status["cut"]["reason"]


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(samples_cmd.SamplesError, match="not a folder"):
        samples_cmd.write_sheet(tmp_path / "nope", tmp_path / "s.csv")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    _slide(tmp_path / "empty" / "sub" / "x.svs")
    with pytest.raises(samples_cmd.SamplesError, match="need --recursive"):
        samples_cmd.write_sheet(tmp_path / "empty", tmp_path / "s.csv")
