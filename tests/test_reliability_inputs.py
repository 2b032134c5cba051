"""Corrupt inputs through ``ghanet tissue`` and then ``ghanet features`` on the same slides.

Each bad slide (truncated, one corrupt JPEG tile under a patch, zero bytes, a directory, an
unreadable file, a text file named .svs) gives a clear per-slide failure: the status record and
the stores name the slide, the path, the cause and what to do, and the good slides of the same
cohort complete. One small Snakemake run shows the same for a whole sample sheet.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from workflow_util import snakemake

from ghanet_pipeline import cli
from ghanet_pipeline.demo import cohort as demo
from ghanet_pipeline.slides import synthetic

SHEET_HINT = "remove the slide from the sample sheet"
# Small patches keep the encoder cheap on a CPU: 64 px at 2 um/px (256 level-0 px), read from level 1.
TISSUE = json.dumps({"target_mpp": 2.0, "patch_size": 64})
READ_LEVEL = 1
TILE = 64  # JPEG tile size of the test slides: a corrupt level-1 tile spans one patch (256 level-0 px)
FEATURES = json.dumps({"num_workers": 0, "batch_size": 4})
FEATURES_SKIP = json.dumps({"num_workers": 0, "batch_size": 4, "skip_bad_patches": True})
GOOD = ("good-1", "good-2")
# slide id -> (words the reason must hold: the cause and what to do)
BAD = {
    "truncated": ("OpenSlide cannot open", "truncated", "copy it again"),
    "zero-bytes": ("empty (0 bytes)", "copy the slide again"),
    "a-directory": ("is a directory", "point the sample sheet's 'path'"),
    "text-as-svs": ("not a whole-slide image", "first bytes"),
}


def write_small_slide(path: Path, seed: int) -> None:
    """A 2048 x 1536 demo-like H&E slide, 3 levels (0.5, 2 and 8 um/px): ~10 patches."""
    rgb, _ = demo.render_slide(demo.SlideRecipe(path.stem, 2048, 1536, 0.3, (seed, 1)))
    synthetic.write_aperio_svs_from_array(path, rgb, mpp=0.5, levels=3, downsample=4, tile=TILE)


def tissue(slide_id: str, path: Path, out: Path, *extra: str) -> int:
    return cli.main(
        ["tissue", "--slide-id", slide_id, "--slide-path", str(path), "--out-dir", str(out), "--settings", TISSUE, *extra]
    )


def features(slide_id: str, path: Path, out: Path, settings: str = FEATURES, store: str | None = None, *extra: str) -> int:
    target = out / "features" / "enc" / f"{store or slide_id}.zarr"
    return cli.main(
        ["features", "--tiles", str(out / "tiles" / f"{slide_id}.zarr"), "--slide-path", str(path),
         "--out", str(target), "--settings", settings, *extra]
    )  # fmt: skip


def status(out: Path, slide_id: str) -> dict:
    return json.loads((out / "status" / f"{slide_id}.json").read_text())


def attrs(store: Path) -> dict:
    return dict(zarr.open_group(str(store), mode="r").attrs)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Good and bad slides, tissue then features on every one of them, in sample-sheet order."""
    root = tmp_path_factory.mktemp("inputs")
    slides, out = root / "slides", root / "out"
    slides.mkdir()
    for seed, slide_id in enumerate(GOOD):
        write_small_slide(slides / f"{slide_id}.svs", seed)
    good = slides / "good-1.svs"
    data = good.read_bytes()
    (slides / "truncated.svs").write_bytes(data[: len(data) // 2])
    (slides / "zero-bytes.svs").write_bytes(b"")
    (slides / "a-directory.svs").mkdir()
    (slides / "text-as-svs.svs").write_text("slide_id,case_id\nnot,a slide\n")
    # The corrupt copy: the JPEG tile of the read level under the middle patch of good-1's grid is destroyed.
    assert tissue("good-1", good, out) == 0
    coords = zarr.open_group(str(out / "tiles" / "good-1.zarr"), mode="r")["coords"][:]
    assert len(coords) >= 4, "the test slide needs a few patches"
    x, y = (int(v) for v in coords[len(coords) // 2])
    corrupt = slides / "corrupt-tile.svs"
    shutil.copy(good, corrupt)
    tiles_attrs = attrs(out / "tiles" / "good-1.zarr")
    assert tiles_attrs["read_level"] == READ_LEVEL, tiles_attrs
    ds, size = int(tiles_attrs["read_downsample"]), int(tiles_attrs["patch_size_level0"])
    at = synthetic.tile_index_at(corrupt, (x + size // 2) // ds, (y + size // 2) // ds, level=READ_LEVEL)
    index = synthetic.corrupt_tile(corrupt, level=READ_LEVEL, index=at)
    tx, ty = (v * ds for v in synthetic.tile_origin(corrupt, index, level=READ_LEVEL))
    span = TILE * ds
    hit = [(int(a), int(b)) for a, b in coords if a < tx + span and tx < a + size and b < ty + span and ty < b + size]

    order = ["good-1", "truncated", "corrupt-tile", "zero-bytes", "a-directory", "text-as-svs", "good-2"]
    codes = {}
    for slide_id in order:
        path = slides / f"{slide_id}.svs"
        rc_t = 0 if slide_id == "good-1" else tissue(slide_id, path, out)
        codes[slide_id] = (rc_t, features(slide_id, path, out))
    return {"root": root, "slides": slides, "out": out, "codes": codes, "corrupt_patches": hit, "coords": coords}


def test_bad_slides_fail_clearly_and_the_cohort_completes(cohort):
    out, slides = cohort["out"], cohort["slides"]
    assert all(codes == (0, 0) for codes in cohort["codes"].values()), cohort["codes"]  # no job stops the run
    for slide_id in GOOD:
        record = status(out, slide_id)
        assert record["status"] == "ok" and record["n_patches"] > 0, record
        store = attrs(out / "features" / "enc" / f"{slide_id}.zarr")
        assert store["status"] == "ok" and store["n_patches"] == record["n_patches"]
    for slide_id, words in BAD.items():
        path = slides / f"{slide_id}.svs"
        record = status(out, slide_id)
        assert record["slide_id"] == slide_id and record["path"] == str(path)
        assert record["status"] == "failed" and record["n_patches"] == 0
        reason = record["reason"]
        assert str(path) in reason, reason
        for word in words:
            assert word in reason, (slide_id, word, reason)
        assert SHEET_HINT in reason or "copy" in reason, reason  # what to do
        tiles = attrs(out / "tiles" / f"{slide_id}.zarr")
        assert (tiles["status"], tiles["reason"], tiles["slide_id"]) == ("failed", reason, slide_id)
        feats = attrs(out / "features" / "enc" / f"{slide_id}.zarr")
        assert feats["status"] == "failed" and feats["slide_id"] == slide_id
        assert feats["reason"] == f"tiles stage failed: {reason}"
        assert zarr.open_group(str(out / "features" / "enc" / f"{slide_id}.zarr"), mode="r")["features"].shape[0] == 0
        assert (out / "qc" / f"{slide_id}.png").stat().st_size > 0

    manifest = out / "manifest.csv"
    assert cli.main(["manifest", "--out-dir", str(out), "--output", str(manifest)]) == 0
    rows = {r["slide_id"]: r for r in csv.DictReader(manifest.open(encoding="utf-8"))}
    assert set(rows) == set(cohort["codes"])
    assert {s for s, r in rows.items() if r["status"] == "failed"} == set(BAD)
    assert all(rows[s]["reason"] == status(out, s)["reason"] for s in rows)


def test_corrupt_tile_passes_tissue_and_fails_features_naming_the_patch(cohort):
    out, slides = cohort["out"], cohort["slides"]
    path = slides / "corrupt-tile.svs"
    record = status(out, "corrupt-tile")
    # segmentation reads an intact low level: same grid as the undamaged copy, and a warning
    assert record["status"] == "ok" and record["n_patches"] == len(cohort["coords"])
    np.testing.assert_array_equal(zarr.open_group(str(out / "tiles" / "corrupt-tile.zarr"), mode="r")["coords"][:], cohort["coords"])
    store = attrs(out / "features" / "enc" / "corrupt-tile.zarr")
    assert store["status"] == "failed", store
    reason = store["reason"]
    x, y = cohort["corrupt_patches"][0]
    assert str(path) in reason and f"(x={x}, y={y})" in reason and "skip_bad_patches" in reason, reason
    assert zarr.open_group(str(out / "features" / "enc" / "corrupt-tile.zarr"), mode="r")["features"].shape[0] == 0

    # strict: exit non-zero, no store at all
    strict_store = out / "features" / "enc" / "strict.zarr"
    assert features("corrupt-tile", path, out, FEATURES, "strict", "--strict") == 1
    assert not strict_store.exists() and not list(strict_store.parent.glob("strict.zarr.tmp-*"))


def test_corrupt_level0_tile_only_warns_in_tissue(cohort, tmp_path):
    """Segmentation reads level 2; only the QC thumbnail touches level 0: a warning, not a failure."""
    slide = tmp_path / "damaged-l0.svs"
    shutil.copy(cohort["slides"] / "good-1.svs", slide)
    synthetic.corrupt_tile(slide, level=0)
    assert tissue("damaged-l0", slide, tmp_path / "out") == 0
    record = status(tmp_path / "out", "damaged-l0")
    assert record["status"] == "ok" and record["n_patches"] == len(cohort["coords"])
    warning = " ".join(record["warnings"])
    assert "QC thumbnail" in warning and "reading pixels" in warning and str(slide) in warning, record["warnings"]
    assert (tmp_path / "out" / "qc" / "damaged-l0.png").stat().st_size > 0


def test_skip_bad_patches_drops_exactly_the_damaged_patches(cohort):
    out, slides = cohort["out"], cohort["slides"]
    assert features("corrupt-tile", slides / "corrupt-tile.svs", out, FEATURES_SKIP, "skipped") == 0
    skipped = zarr.open_group(str(out / "features" / "enc" / "skipped.zarr"), mode="r")
    a = dict(skipped.attrs)
    bad = cohort["corrupt_patches"]
    assert a["status"] == "ok" and a["n_bad_patches"] == len(bad) and sorted(map(tuple, a["bad_patches"])) == sorted(bad)
    keep = np.array([tuple(c) not in set(bad) for c in cohort["coords"].tolist()])
    np.testing.assert_array_equal(skipped["coords"][:], cohort["coords"][keep])
    good = zarr.open_group(str(out / "features" / "enc" / "good-1.zarr"), mode="r")["features"][:]
    # the other patches are the same pixels as in the undamaged copy: the same features
    np.testing.assert_allclose(skipped["features"][:].astype(np.float32), good[keep].astype(np.float32), rtol=2e-2, atol=2e-2)


def test_strict_tissue_fails_fast_and_writes_nothing(cohort, tmp_path):
    rc = tissue("zero-bytes", cohort["slides"] / "zero-bytes.svs", tmp_path, "--strict")
    assert rc == 1 and not any(tmp_path.rglob("*.json")) and not (tmp_path / "tiles").exists()


def _run_as_nobody(argv: list[str]) -> None:  # in a forked child: drop root, run one stage, exit
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    os._exit(cli.main(argv))


def test_unreadable_slide(cohort):
    """chmod 000 does not stop root, so the stage runs in a forked child as user nobody (65534).

    The fork happens after the module fixture ran both stages here, so every module the stage
    needs is already imported (nobody cannot read this interpreter's standard library under /root).
    """
    work = Path(tempfile.mkdtemp(prefix="ghanet-unreadable-"))  # nobody cannot enter pytest's 0700 tmp dirs
    try:
        os.chmod(work, 0o777)
        slide = work / "locked.svs"
        shutil.copy(cohort["slides"] / "good-1.svs", slide)
        os.chmod(slide, 0o000)
        out = work / "out"
        argv = ["tissue", "--slide-id", "locked", "--slide-path", str(slide), "--out-dir", str(out)]
        if os.geteuid() == 0:
            child = multiprocessing.get_context("fork").Process(target=_run_as_nobody, args=(argv,))
            child.start()
            child.join(120)
            assert child.exitcode == 0, f"the stage run as nobody exited with {child.exitcode}"
        else:
            assert cli.main(argv) == 0
        record = json.loads((out / "status" / "locked.json").read_text())
        assert record["status"] == "failed" and str(slide) in record["reason"]
        assert "permission denied" in record["reason"] and "read access" in record["reason"], record["reason"]
        assert attrs(out / "tiles" / "locked.zarr")["status"] == "failed"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_snakemake_run_with_bad_slides_completes_and_lists_them(cohort, tmp_path):
    """A sample sheet of one good slide and two bad ones: the workflow finishes (tissue, manifest,
    features) with no failed job (the default profile's keep-going is not what saves it), and
    manifest.csv names each failure."""
    slides = cohort["slides"]
    ids = ["good-2", "zero-bytes", "a-directory"]
    with_features = ["zero-bytes"]  # each features job imports torch (seconds): good slides' features are checked above
    rows = ["slide_id,case_id,path,mpp"] + [f"{s},CASE-{i},{slides / f'{s}.svs'}," for i, s in enumerate(ids)]
    (tmp_path / "samples.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "config.yaml").write_text(
        "output_dir: results\nsamples: samples.csv\n"
        f"tissue: {TISSUE}\nfeatures: {FEATURES}\n"
    )
    targets = ["results/manifest.csv"] + [f"results/features/efficientnet_lite0/{s}.zarr" for s in with_features]
    result = snakemake(tmp_path, "--cores", "2", *targets)
    assert "Error in rule" not in result.stderr and "Exception" not in result.stderr, result.stderr[-3000:]
    manifest = {r["slide_id"]: r for r in csv.DictReader((tmp_path / "results" / "manifest.csv").open())}
    assert manifest["good-2"]["status"] == "ok" and int(manifest["good-2"]["n_patches"]) > 0
    for slide_id in ids[1:]:
        assert manifest[slide_id]["status"] == "failed" and str(slides / f"{slide_id}.svs") in manifest[slide_id]["reason"]
    feats = tmp_path / "results" / "features" / "efficientnet_lite0"
    assert attrs(feats / "zero-bytes.zarr")["status"] == "failed" and "empty (0 bytes)" in attrs(feats / "zero-bytes.zarr")["reason"]
