"""Feature shards in the workflow (features.slides_per_job > 1): one job per shard, and a rerun
(a deleted store, a tissue rerun of one slide) re-encodes only the slide concerned, keeping the other stores of its shard untouched."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from workflow_util import snakemake, tiny_demo_config

FEATURES = {"encoder": "test_efficientnet", "weights": "random", "batch_size": 16, "num_workers": 0,
            "device": "cpu", "slides_per_job": 3}


def _job_counts(stdout: str) -> dict[str, int]:
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", stdout, flags=re.M)}


def _stamps(features_dir: Path) -> dict[str, int]:
    return {p.name: (p / "zarr.json").stat().st_mtime_ns for p in sorted(features_dir.glob("*.zarr"))}


def _stores(work: Path) -> list[str]:
    from ghanet_pipeline.demo import cohort as demo

    return [f"results/features/test_efficientnet/{s}.zarr" for s in demo.plan(6, 3, work / "demo_data").slide_id]


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("shards")
    tiny_demo_config(work, features=FEATURES)
    snakemake(work, "--cores", "2", *_stores(work))
    return work


def test_one_job_per_shard_and_reruns_redo_one_slide(sharded_run):
    work = sharded_run
    features_dir = work / "results" / "features" / "test_efficientnet"
    stores = _stores(work)
    slides = [Path(s).stem for s in stores]
    n_shards = -(-len(slides) // FEATURES["slides_per_job"])
    assert len(_stamps(features_dir)) == len(slides)
    plan = _job_counts(snakemake(work, "-n", "--cores", "2", "--forcerun",
                                 *[f"features_shard{i}" for i in range(n_shards)], "--", *stores).stdout)
    assert {k: v for k, v in plan.items() if k.startswith("features")} == {
        f"features_shard{i}": 1 for i in range(n_shards)}

    # a deleted store: its shard job runs again and encodes that slide only
    before = _stamps(features_dir)
    gone = slides[1]
    shutil.rmtree(features_dir / f"{gone}.zarr")
    result = snakemake(work, "--cores", "2", *stores)
    after = _stamps(features_dir)
    assert after[f"{gone}.zarr"] != before[f"{gone}.zarr"]
    assert {k: v for k, v in after.items() if k != f"{gone}.zarr"} == {
        k: v for k, v in before.items() if k != f"{gone}.zarr"}, "other stores of the shard were rewritten"
    assert "features_shard0" in result.stdout + result.stderr  # slides[1] is in the first shard

    # a re-tiled slide (--forcerun of its tiles store): tissue and features of that slide only
    retiled = slides[2]
    before = after
    result = snakemake(work, "--cores", "2", "--forcerun", f"results/tiles/{retiled}.zarr", "--", *stores)
    after = _stamps(features_dir)
    assert {k for k in after if after[k] != before[k]} == {f"{retiled}.zarr"}

    # --forcerun of a store reruns its shard job, which keeps complete stores (documented)
    before = after
    snakemake(work, "--cores", "2", "--forcerun", stores[0], "--", *stores)
    assert _stamps(features_dir) == before

    # nothing left to do afterwards (no params drift from the forced run)
    final = snakemake(work, "-n", "--cores", "2", *stores)
    assert "Nothing to be done" in final.stdout + final.stderr


def test_auto_shards_follow_the_slide_bytes_and_a_new_plan_encodes_nothing_again(sharded_run):
    """slides_per_job: auto on a sample sheet of existing slides groups them by their bytes on disk.
    Changing the plan reruns the shard jobs whose slide lists changed, and they keep every store."""
    from ghanet_pipeline.features.shards import plan_shards, slide_bytes

    work = sharded_run
    stores = _stores(work)
    slides = [Path(s).stem for s in stores]
    paths = [work / "demo_data" / "slides" / f"{s}.svs" for s in slides]
    total_mb = sum(slide_bytes(p) for p in paths) / (1 << 20)
    budget = max(1, round(total_mb / 2))  # about two shards' worth
    expected = plan_shards(slides, paths, "auto", budget)
    assert 2 <= len(expected) < len(slides) and sum(expected, []) == slides
    # the demo's slides, now on disk, as a user's sample sheet (the demo itself is never weighed);
    # brought up to date with fixed shards first (leaving the demo reruns the tissue stage)
    as_sheet = {"demo": {"enabled": False}, "samples": "demo_data/samples.csv"}
    tiny_demo_config(work, **as_sheet, features=FEATURES)
    snakemake(work, "--cores", "2", *stores)
    tiny_demo_config(work, **as_sheet, features={**FEATURES, "slides_per_job": "auto", "shard_megabytes": budget})

    features_dir = work / "results" / "features" / "test_efficientnet"
    before = _stamps(features_dir)
    plan = _job_counts(snakemake(work, "-n", "--cores", "2", "--forcerun",
                                 *[f"features_shard{i}" for i in range(len(expected))], "--", *stores).stdout)
    assert {k: v for k, v in plan.items() if k.startswith("features")} == {
        f"features_shard{i}": 1 for i in range(len(expected))}
    snakemake(work, "--cores", "2", *stores)  # the new plan: shard jobs run, keep their stores
    assert _stamps(features_dir) == before
    final = snakemake(work, "-n", "--cores", "2", *stores)
    assert "Nothing to be done" in final.stdout + final.stderr  # and the plan is stable from then on
