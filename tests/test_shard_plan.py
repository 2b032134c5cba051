"""The features stage's shard plan (features/shards.py): k slides per job, or ``auto`` shards of
about ``shard_megabytes`` of slide files, filled in sheet order (appending slides changes only the
last shard)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ghanet_pipeline.features.shards import (
    CPU_SHARD_MEGABYTES,
    GPU_SHARD_MEGABYTES,
    UNKNOWN_SIZE_SLIDES_PER_JOB,
    plan_shards,
    shard_budget_megabytes,
    slide_bytes,
)

MB = 1 << 20


def files(folder: Path, megabytes: list[float]) -> tuple[list[str], list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    names, paths = [], []
    for i, size in enumerate(megabytes):
        path = folder / f"S{i:03d}.svs"
        path.write_bytes(b"\0" * int(size * MB))
        names.append(path.stem)
        paths.append(path)
    return names, paths


def test_fixed_counts_keep_the_sheet_order(tmp_path):
    names, paths = files(tmp_path, [0.01] * 7)
    assert plan_shards(names, paths, 3) == [names[:3], names[3:6], names[6:]]
    assert plan_shards(names, paths, 1) == [[n] for n in names]
    with pytest.raises(ValueError, match="slides_per_job"):
        plan_shards(names, paths, 0)


def test_auto_fills_shards_in_sheet_order_up_to_the_budget(tmp_path):
    names, paths = files(tmp_path, [1.0] * 39)
    shards = plan_shards(names, paths, "auto", shard_megabytes=25)
    assert [len(s) for s in shards] == [25, 14]
    assert sum(shards, []) == names


def test_appending_slides_changes_only_the_last_shard(tmp_path):
    """A stable plan: shard jobs whose slide lists do not change are not rerun by Snakemake."""
    names, paths = files(tmp_path, [0.7, 1.3, 0.4, 2.0, 0.9, 1.1, 0.6, 1.5, 0.8])
    before = plan_shards(names[:6], paths[:6], "auto", shard_megabytes=2)
    after = plan_shards(names, paths, "auto", shard_megabytes=2)
    assert after[: len(before) - 1] == before[:-1]
    assert after[len(before) - 1][: len(before[-1])] == before[-1]


def test_auto_puts_small_slides_together_and_big_ones_alone(tmp_path):
    small, small_paths = files(tmp_path / "small", [0.45] * 100)  # the benchmark's 16-patch slides
    assert plan_shards(small, small_paths, "auto", shard_megabytes=CPU_SHARD_MEGABYTES) == [small]
    big, big_paths = files(tmp_path / "big", [3, 3, 3, 0.5, 0.5])
    shards = plan_shards(big, big_paths, "auto", shard_megabytes=2)
    assert sum(shards, []) == big and all(shards)
    assert [big[0]] in shards  # a slide over the budget is a job of its own
    assert len(shards) <= 5


def test_unknown_sizes_fall_back_to_a_fixed_count(tmp_path):
    """The demo's slides are written by the workflow, after the plan: they cannot be weighed."""
    names = [f"S{i}" for i in range(45)]
    expected = [UNKNOWN_SIZE_SLIDES_PER_JOB, UNKNOWN_SIZE_SLIDES_PER_JOB, 5]
    shards = plan_shards(names, [tmp_path / f"{n}.svs" for n in names], "auto")  # not written yet
    assert [len(s) for s in shards] == expected
    _, paths = files(tmp_path / "written", [0.01] * 45)
    assert [len(s) for s in plan_shards(names, None, "auto")] == expected  # the demo: never weighed


def test_slide_bytes_count_companion_data(tmp_path):
    mrxs = tmp_path / "a.mrxs"
    mrxs.write_bytes(b"\0" * 100)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "Data0000.dat").write_bytes(b"\0" * 5000)
    dicom = tmp_path / "b"
    (dicom / "series").mkdir(parents=True)
    (dicom / "series" / "1.dcm").write_bytes(b"\0" * 300)
    (dicom / "2.dcm").write_bytes(b"\0" * 200)
    assert slide_bytes(mrxs) == 5100
    assert slide_bytes(dicom) == 500
    assert slide_bytes(tmp_path / "missing.svs") is None


def test_default_budget_by_device():
    assert shard_budget_megabytes(None, "cpu") == CPU_SHARD_MEGABYTES
    assert shard_budget_megabytes(None, "auto") == shard_budget_megabytes(None, "cuda:1") == GPU_SHARD_MEGABYTES
    assert shard_budget_megabytes(10, "cuda") == 10
