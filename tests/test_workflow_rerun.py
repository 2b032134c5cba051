"""Reruns on a finished run: one stage, up to one stage, one slide, and a changed setting.

One real run (two real slides, a tiny random-weight encoder, no genomics) is made once; each
test then asks Snakemake what it would do (`-n`: the dry-run job table), so a test reads the
rerun decision without spending the time to redo it. Settings reach the rules as `params:`,
so a changed tiling parameter reruns the slide jobs and a changed encoder the feature jobs.

How to do the same by hand (docs: README "Reruns"):
  snakemake --forcerun features            # redo one stage (and what depends on it)
  snakemake --until tissue                 # run up to one stage only
  snakemake --forcerun results/tiles/S2.zarr   # redo one slide (or delete its outputs)
  # edit config.yaml (tissue.patch_size, features.encoder, ...) and rerun: only dependents run
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_util import REPO

SLIDES_DIR = REPO / "tests" / "data" / "slides"  # shipped with the project (README there)
SLIDES = {  # slide id -> (file, mpp given in the sheet or None); two copies of the same small real slide
    "S1": ("CMU-1-Small-Region.svs", None),
    "S2": ("CMU-1-Small-Region.svs", 0.499),
}
SLIDE_RULES = ("tissue", "features")


def _config(work: Path, **changes) -> dict:
    cfg = {
        "output_dir": "results",
        "samples": str(work / "samples.csv"),
        "features": {"encoder": "test_efficientnet", "weights": "random", "batch_size": 16, "num_workers": 0,
                     "device": "cpu"},
        "tissue": {"patch_size": 256},
    }
    for section, values in changes.items():
        cfg[section] = {**cfg[section], **values}
    return cfg


def _snakemake(work: Path, cfg: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    text = yaml.safe_dump(cfg, sort_keys=False)
    path = work / f"config_{hashlib.sha1(text.encode()).hexdigest()[:12]}.yaml"
    path.write_text(text)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(path), "--cores", "2", *args]
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def _planned(result: subprocess.CompletedProcess) -> dict[str, int]:
    """The dry run's job table (rule -> count), without the `all` target; {} when nothing to do."""
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M)}
    counts.pop("all", None)
    return counts


def _jobs(result: subprocess.CompletedProcess) -> set[tuple[str, str]]:
    """(rule, wildcards) of every planned job."""
    text = result.stdout + result.stderr
    jobs = set()
    for block in re.split(r"\n(?=\[[A-Z][a-z]{2} [A-Z][a-z]{2} )", text):  # one block per job
        m = re.search(r"^(?:local)?rule (\w+):", block, flags=re.M)
        if m and m.group(1) != "all":
            wc = re.search(r"^\s+wildcards: (.+)$", block, flags=re.M)
            jobs.add((m.group(1), wc.group(1) if wc else ""))
    return jobs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("rerun")
    rows = ["slide_id,case_id,path,mpp"]
    for slide_id, (name, mpp) in SLIDES.items():
        path = work / "slides" / f"{slide_id}.svs"  # a copy each: a sheet may not list one file under two ids
        path.parent.mkdir(exist_ok=True)
        shutil.copyfile(SLIDES_DIR / name, path)
        rows.append(f"{slide_id},P-{slide_id},{path},{'' if mpp is None else mpp}")
    (work / "samples.csv").write_text("\n".join(rows) + "\n")
    _snakemake(work, _config(work))
    assert (work / "results" / "report" / "index.html").is_file()
    assert _planned(_snakemake(work, _config(work), "-n")) == {}, "a finished run should have nothing to do"
    return work


def _copy(run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run (modification times and Snakemake's records kept)."""
    work = tmp_path / "copy"
    shutil.copytree(run, work, symlinks=True)  # copy2: modification times kept
    return work


def test_forcerun_one_stage_redoes_it_and_its_dependents_only(finished_run):
    planned = _planned(_snakemake(finished_run, _config(finished_run), "-n", "--forcerun", "features"))
    assert planned == {"features": len(SLIDES), "report": 1}


def test_until_one_stage_stops_there(tmp_path, finished_run):
    shutil.copy(finished_run / "samples.csv", tmp_path / "samples.csv")
    planned = _planned(_snakemake(tmp_path, _config(tmp_path), "-n", "--until", "tissue"))
    assert planned == {"tissue": len(SLIDES)}, "a fresh folder with --until tissue plans tissue jobs only"


def test_redo_one_slide_by_forcerun_of_its_output(finished_run):
    result = _snakemake(finished_run, _config(finished_run), "-n", "--forcerun", "results/tiles/S2.zarr")
    assert _jobs(result) == {("tissue", "slide=S2"), ("features", "slide=S2"), ("manifest", ""), ("report", "")}


def test_redo_one_slide_by_removing_its_outputs(finished_run, tmp_path):
    work = _copy(finished_run, tmp_path)
    shutil.rmtree(work / "results" / "features" / "test_efficientnet" / "S1.zarr")
    result = _snakemake(work, _config(finished_run), "-n")  # the same config (and sample sheet) as the run
    assert _jobs(result) == {("features", "slide=S1"), ("report", "")}


def test_changed_tiling_parameter_reruns_the_slide_jobs(finished_run):
    cfg = _config(finished_run, tissue={"patch_size": 512})
    result = _snakemake(finished_run, cfg, "-n")
    assert _planned(result) == {"tissue": len(SLIDES), "features": len(SLIDES), "manifest": 1, "report": 1}
    assert "Params have changed" in result.stdout + result.stderr


def test_changed_encoder_makes_new_feature_stores_only(finished_run):
    cfg = _config(finished_run, features={"encoder": "test_resnet"})
    result = _snakemake(finished_run, cfg, "-n")
    assert _planned(result) == {"features": len(SLIDES), "report": 1}
    text = result.stdout + result.stderr
    assert "results/features/test_resnet/S1.zarr" in text, "a new encoder writes a new feature folder"
