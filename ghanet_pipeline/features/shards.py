"""Which slides one features job encodes: the shard plan the workflow makes at parse time.

A features job pays a fixed cost (interpreter, torch, the encoder: ~2.2 CPU s here with the
graph cache, plus CUDA initialisation on a GPU) before its first patch, so a job should hold
enough work to dwarf it. ``features.slides_per_job``:

- an integer k: shards of k slides in sample-sheet order (1 = a job per slide);
- ``auto``: shards of about ``features.shard_megabytes`` of slide files each, filled in
  sample-sheet order. A slide's bytes on disk stand for its work: the background of a scan
  compresses to almost nothing, so bytes follow the tissue (measured here: 0.8 CPU s of encoding
  per MB for generated 16-patch slides, 1.3 for the demo's; a 1 GB TCGA slide of ~15k patches
  is ~0.3 by the per-patch rate). Filling in order keeps the plan stable: appending slides to
  the sheet changes only the last shard.

A plan that changes (another shard size, slides added or removed, a slide file replaced)
reruns the shard jobs whose slide lists changed, and Snakemake then reruns what depends on their
stores; those jobs keep every complete, current store and fold, so nothing is encoded or trained
again, but each costs a job start. Slides the workflow writes itself (the demo) cannot be weighed
when the first plan is made, and weighing them later would change the plan between runs: they
are planned in fixed shards of ``UNKNOWN_SIZE_SLIDES_PER_JOB``, as is any slide not on disk.

Torch-free: the Snakefile calls it while parsing. The plan changes no result (a slide's store
is the same from any shard), so it is not part of the settings that trigger reruns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

AUTO = "auto"
# Default budgets, by features.device: on a CPU a job of 64 MB of slides is 20-80 s of encoding;
# a GPU encodes ~50x faster and adds CUDA initialisation, so its jobs take more.
CPU_SHARD_MEGABYTES = 64
GPU_SHARD_MEGABYTES = 4096
UNKNOWN_SIZE_SLIDES_PER_JOB = 20
MEGABYTE = 1 << 20


def slide_bytes(path: str | Path) -> int | None:
    """Bytes of a slide on disk, with its companion data; None if it is not there (yet).

    A file counts with a folder of the same stem beside it (MIRAX: ``x.mrxs`` + ``x/``); a folder
    (DICOM) counts every file in it.
    """
    path = Path(path)
    if path.is_file():
        companion = path.with_suffix("")
        return path.stat().st_size + (_folder_bytes(companion) if companion.is_dir() else 0)
    if path.is_dir():
        return _folder_bytes(path)
    return None


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def shard_budget_megabytes(shard_megabytes: int | None, device: str) -> int:
    """``features.shard_megabytes``, or its default for ``features.device`` (cpu vs auto / cuda)."""
    if shard_megabytes is not None:
        return int(shard_megabytes)
    return CPU_SHARD_MEGABYTES if device == "cpu" else GPU_SHARD_MEGABYTES


def plan_shards(slides: Sequence[str], paths: Sequence[str | Path] | None, slides_per_job: int | str,
                shard_megabytes: int | None = None, device: str = "cpu") -> list[list[str]]:
    """The slides of each features job, in sample-sheet order (see the module docstring).

    ``paths`` None: the slides cannot be weighed (written by the workflow itself).
    """
    slides = list(slides)
    if slides_per_job != AUTO:
        return _chunks(slides, int(slides_per_job))
    sizes = [slide_bytes(p) for p in paths] if paths is not None else [None]
    if any(size is None for size in sizes):
        return _chunks(slides, UNKNOWN_SIZE_SLIDES_PER_JOB)
    budget = shard_budget_megabytes(shard_megabytes, device) * MEGABYTE
    shards: list[list[str]] = [[]]
    filled = 0
    for slide, size in zip(slides, sizes):
        if shards[-1] and filled + size > budget:  # full: this slide opens the next shard
            shards.append([])
            filled = 0
        shards[-1].append(slide)
        filled += size
    return [shard for shard in shards if shard]


def _chunks(slides: list[str], k: int) -> list[list[str]]:
    if k < 1:
        raise ValueError(f"features.slides_per_job must be >= 1 or 'auto', got {k}")
    return [slides[i : i + k] for i in range(0, len(slides), k)]
