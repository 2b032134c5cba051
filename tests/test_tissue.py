"""``ghanet tissue`` and ``ghanet manifest`` end to end on real and synthetic slides."""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
import pytest
import zarr

from ghanet_pipeline import cli
from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.demo import cohort as demo
from ghanet_pipeline.io.layout import UnsafeIdError
from ghanet_pipeline.slides import qc, synthetic, tiling, tissue

SETTINGS = stage_settings("tissue", None, None)
CMU = "CMU-1-Small-Region"
TCGA = "TCGA-CR-7395-01A-01-TS1"
# The demo truth is an 8 um/px mask and the slide renders its edges blurred: a patch's true
# tissue fraction is known to within a few of its 256 truth pixels.
TRUTH_TOLERANCE = 0.02


def _attrs(out, slide_id):
    return dict(zarr.open_group(str(out / "tiles" / f"{slide_id}.zarr"), mode="r").attrs)


def _status(out, slide_id):
    return json.loads((out / "status" / f"{slide_id}.json").read_text())


def _outputs(out, slide_id):
    return [
        out / "tiles" / f"{slide_id}.zarr" / "zarr.json",
        out / "qc" / f"{slide_id}.png",
        out / "qc" / f"{slide_id}.geojson",
        out / "status" / f"{slide_id}.json",
    ]


def _png_shape(path):
    import cv2

    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable png"
    return image.shape


def _point_in_polygons(features, x, y) -> bool:
    import cv2

    for feature in features:
        exterior, *holes = feature["geometry"]["coordinates"]
        inside = cv2.pointPolygonTest(np.asarray(exterior, np.float32), (float(x), float(y)), False) >= 0
        if inside and not any(cv2.pointPolygonTest(np.asarray(h, np.float32), (float(x), float(y)), False) > 0 for h in holes):
            return True
    return False


# ----------------------------------------------------------------------------- real slides


@pytest.fixture(scope="module")
def cmu_run(test_slides, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmu")
    rc = cli.main(["tissue", "--slide-id", CMU, "--slide-path", str(test_slides.cmu), "--out-dir", str(out)])
    assert rc == 0
    return out


def test_cmu_small_region(cmu_run):
    out = cmu_run
    status, attrs = _status(out, CMU), _attrs(out, CMU)
    assert status["status"] == "ok" and status["reason"] == ""
    assert status["mpp"] == pytest.approx(0.499) and status["mpp_source"] == "slide_properties"
    assert abs(status["effective_mpp"] / 0.5 - 1) <= SETTINGS.mpp_tolerance
    # the region is 1.1 x 1.5 mm with tissue over about a third of it: 88 cells of 128 um; the
    # gap filler adds shifted, partly overlapping patches on the ragged tissue (about 30 + 30)
    assert 15 <= status["n_patches"] <= 90, status["n_patches"]
    for key in (
        "ghanet_store", "slide_id", "source_path", "source_size_bytes", "level0_size", "mpp", "mpp_source",
        "target_mpp", "effective_mpp", "read_level", "read_downsample", "patch_size", "patch_size_read",
        "patch_size_level0", "step_level0", "mask_downsample", "segmentation", "package_version", "status", "reason",
    ):  # fmt: skip
        assert key in attrs, key
    assert attrs["ghanet_store"] == "tiles" and attrs["level0_size"] == [2220, 2967]
    assert attrs["patch_size_level0"] == 256 and attrs["read_level"] == 0
    group = zarr.open_group(str(out / "tiles" / f"{CMU}.zarr"), mode="r")
    coords = group["coords"][:]
    assert coords.dtype == np.int64 and coords.shape == (status["n_patches"], 2)
    np.testing.assert_array_equal(np.lexsort((coords[:, 0], coords[:, 1])), np.arange(len(coords)))
    # patches start inside the slide; some run past the bottom edge (tissue touches it) and say so
    assert (coords >= 0).all() and (coords[:, 0] < 2220).all() and (coords[:, 1] < 2967).all()
    past = (coords[:, 0] + 256 > 2220) | (coords[:, 1] + 256 > 2967)
    assert attrs["n_past_edge"] == int(past.sum()) >= 1 and attrs["outside_slide_reads_as"] == "white"
    assert group["tissue_mask"].dtype == np.uint8 and group["tissue_mask"].ndim == 2


def test_cmu_geojson_outlines_the_patches_and_png_is_an_image(cmu_run):
    out = cmu_run
    geo = json.loads((out / "qc" / f"{CMU}.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and geo["features"]
    for feature in geo["features"]:
        assert feature["geometry"]["type"] == "Polygon"
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["classification"]["name"] == "Tissue"
        for ring in feature["geometry"]["coordinates"]:
            assert ring[0] == ring[-1] and len(ring) >= 4
            xy = np.asarray(ring)
            assert (xy >= 0).all() and (xy[:, 0] <= 2220).all() and (xy[:, 1] <= 2967).all()
    group = zarr.open_group(str(out / "tiles" / f"{CMU}.zarr"), mode="r")
    coords, mask, ds = group["coords"][:], group["tissue_mask"][:], group.attrs["mask_downsample"]
    # the polygons are the mask the grid measured: rasterised back, they hold every patch's tissue
    drawn = qc.rasterize(geo["features"], mask.shape, ds)
    assert (drawn & mask).sum() / (drawn | mask).sum() >= 0.99
    fractions = tiling.box_fractions(tiling.integral_image(drawn), coords[:, 0], coords[:, 1], 256, ds)
    assert np.diag(fractions).min() >= SETTINGS.min_tissue_fraction - 0.01
    # the glass corner is outside every polygon
    assert not _point_in_polygons(geo["features"], 50, 50)
    height, width, _ = _png_shape(out / "qc" / f"{CMU}.png")
    assert width >= 500 and height >= 500


def test_tcga_without_mpp_fails_then_runs_with_sheet_mpp_or_default(test_slides, tmp_path):
    path = str(test_slides.no_mpp)  # JPEG 2000 Aperio without any resolution, as TCGA-CR-7395
    assert cli.main(["tissue", "--slide-id", TCGA, "--slide-path", path, "--out-dir", str(tmp_path)]) == 0
    status = _status(tmp_path, TCGA)
    assert status["status"] == "failed" and status["n_patches"] == 0
    assert path in status["reason"] and "'mpp' column" in status["reason"] and "default_slide_mpp" in status["reason"]
    assert all(p.exists() for p in _outputs(tmp_path, TCGA))
    assert _attrs(tmp_path, TCGA)["status"] == "failed"

    assert cli.main(["tissue", "--slide-id", "with-mpp", "--slide-path", path, "--mpp", "0.25", "--out-dir", str(tmp_path)]) == 0
    status = _status(tmp_path, "with-mpp")
    assert (status["status"], status["mpp"], status["mpp_source"]) == ("ok", 0.25, "sample_sheet")
    assert status["n_patches"] > 10
    attrs = _attrs(tmp_path, "with-mpp")  # level 1 is 0.50013 um/px: within tolerance, read as is
    assert (attrs["read_level"], attrs["patch_size_read"], attrs["patch_size_level0"]) == (1, 256, 512)
    settings = json.dumps({"default_slide_mpp": 0.25})
    assert cli.main(["tissue", "--slide-id", "default", "--slide-path", path, "--out-dir", str(tmp_path), "--settings", settings]) == 0
    status = _status(tmp_path, "default")
    assert (status["status"], status["mpp_source"]) == ("ok", "config_default") and status["warnings"]


def test_bad_slides_fail_clearly_and_the_loop_goes_on(test_slides, tmp_path):
    slides = test_slides
    loop = [("unopenable", slides.unopenable), ("cmu", slides.cmu), ("unreadable", slides.unreadable),
            ("broken", slides.broken), ("missing", slides.missing), ("small", slides.small)]  # fmt: skip
    for slide_id, path in loop:
        tissue.run(slide_id, path, tmp_path, SETTINGS)
    expected = {
        "unopenable": "Unsupported TIFF compression",
        "unreadable": "reading pixels",
        "broken": "OpenSlideUnsupportedFormatError",
        "missing": "not found",
    }
    for slide_id, path in loop:
        status = _status(tmp_path, slide_id)
        assert all(p.exists() for p in _outputs(tmp_path, slide_id)), slide_id
        if slide_id in expected:
            assert status["status"] == "failed" and status["n_patches"] == 0
            assert expected[slide_id] in status["reason"] and str(path) in status["reason"]
            coords = zarr.open_group(str(tmp_path / "tiles" / f"{slide_id}.zarr"), mode="r")["coords"]
            assert coords.shape == (0, 2)
            assert json.loads((tmp_path / "qc" / f"{slide_id}.geojson").read_text())["features"] == []
        else:
            assert status["status"] == "ok", status
    assert _status(tmp_path, "cmu")["n_patches"] > 10
    # small.svs: 16x16 px of tissue, too small for a 256 px patch -> ok, 0 patches, a warning
    assert _status(tmp_path, "small")["n_patches"] == 0 and _status(tmp_path, "small")["warnings"]

    manifest = tmp_path / "manifest.csv"
    assert cli.main(["manifest", "--out-dir", str(tmp_path), "--output", str(manifest)]) == 0
    rows = {r["slide_id"]: r for r in csv.DictReader(manifest.open())}
    assert set(rows) == {s for s, _ in loop}
    assert rows["broken"]["status"] == "failed" and rows["cmu"]["status"] == "ok"
    assert int(rows["cmu"]["n_patches"]) == _status(tmp_path, "cmu")["n_patches"]


def test_strict_exits_non_zero_and_writes_nothing(test_slides, tmp_path):
    path = str(test_slides.broken)
    rc = cli.main(["tissue", "--slide-id", "broken", "--slide-path", path, "--out-dir", str(tmp_path), "--strict"])
    assert rc == 1
    assert not any(tmp_path.rglob("*"))
    with pytest.raises(tissue.StrictFailure, match="broken.svs"):
        tissue.run("broken", path, tmp_path, SETTINGS, strict=True)
    # strict changes nothing for a good slide
    ok = str(test_slides.cmu)
    assert cli.main(["tissue", "--slide-id", "cmu", "--slide-path", ok, "--out-dir", str(tmp_path), "--strict"]) == 0


def test_unsafe_slide_id_is_refused_before_anything_is_written(test_slides, tmp_path):
    out = tmp_path / "out"
    path = str(test_slides.cmu)
    assert cli.main(["tissue", "--slide-id", "../evil", "--slide-path", path, "--out-dir", str(out)]) == 2
    assert not tmp_path.joinpath("evil.json").exists() and not out.exists()
    with pytest.raises(UnsafeIdError):
        tissue.run("../evil", path, out, SETTINGS)
    assert not any(tmp_path.rglob("*evil*"))


# ----------------------------------------------------------------------------- synthetic slides


@pytest.fixture(scope="module")
def demo_slide(tmp_path_factory):
    """A demo-generator slide (pen over tissue and glass, debris, holes) with its truth masks."""
    folder = tmp_path_factory.mktemp("demo")
    recipe = demo.SlideRecipe(slide_id="demo", width=2560, height=1920, tumour_fraction=0.3, seed_words=(11, 5, 1))
    demo.write_slide(recipe, folder / "demo.svs", folder / "demo.npz")
    truth = {k: v for k, v in np.load(folder / "demo.npz").items()}
    assert (truth["pen"] & truth["tissue"]).sum() > 100  # the test is not vacuous
    assert (truth["debris"] & truth["tissue"]).sum() > 20 and truth["holes"].sum() > 20
    # this slide is a quarter of a demo slide (1.3 x 1 mm): its tissue pieces are below the
    # default 0.1 mm^2 minimum once the pen is cut out of them, so a smaller minimum
    small = stage_settings("tissue", None, json.dumps({"min_tissue_area_um2": 20000.0}))
    result = tissue.run("demo", folder / "demo.svs", folder / "out", small)
    assert result.status == "ok"
    return result, {k: v.astype(bool) if v.dtype == np.uint8 else v for k, v in truth.items()}


def test_no_patch_centred_on_pen_or_debris(demo_slide):
    result, truth = demo_slide
    ds, size = int(truth["downsample"]), result.level.patch_size_level0
    coords = result.grid.coords
    assert len(coords) >= 8  # two pieces of about 0.3 mm^2 each, one cut by the pen
    cx, cy = (coords[:, 0] + size // 2) // ds, (coords[:, 1] + size // 2) // ds
    assert not truth["pen"][cy, cx].any()
    assert not truth["debris"][cy, cx].any()
    # the pen and debris are out of the tissue mask
    mask = result.segmentation.tissue.astype(bool)
    assert mask.shape == truth["tissue"].shape  # both 8 um/px
    # (a few fringe pixels where ink lies over dark stained tissue look like stain at 8 um/px)
    assert (mask & truth["pen"]).sum() <= 0.01 * truth["pen"].sum()
    assert (mask & truth["debris"]).sum() <= 0.01 * truth["debris"].sum()


def test_holes_carved_and_every_patch_holds_enough_true_tissue(demo_slide):
    result, truth = demo_slide
    ds, size = int(truth["downsample"]), result.level.patch_size_level0
    mask = result.segmentation.tissue.astype(bool)
    assert (mask & truth["holes"]).sum() <= 0.2 * truth["holes"].sum()
    good = truth["tissue"] & ~truth["pen"] & ~truth["debris"]
    coords = result.grid.coords
    true_fraction = np.array(
        [tiling.box_fractions(tiling.integral_image(good), np.array([x]), np.array([y]), size, ds)[0, 0] for x, y in coords]
    )
    assert true_fraction.min() >= SETTINGS.min_tissue_fraction - TRUTH_TOLERANCE, np.sort(true_fraction)[:5]
    assert np.median(true_fraction) > 0.7
    # and the mask agrees with the truth overall
    iou = (mask & good).sum() / (mask | good).sum()
    assert iou > 0.8


def test_blank_slide_is_ok_with_zero_patches_and_a_warning(tmp_path):
    rng = np.random.default_rng(0)
    glass = np.clip(243 + rng.normal(0, 2, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    synthetic.write_aperio_svs_from_array(tmp_path / "blank.svs", glass, mpp=0.5, levels=2)
    result = tissue.run("blank", tmp_path / "blank.svs", tmp_path / "out", SETTINGS)
    status = _status(tmp_path / "out", "blank")
    assert result.status == status["status"] == "ok" and status["n_patches"] == 0
    assert any("no tissue" in w for w in status["warnings"])
    assert json.loads((tmp_path / "out" / "qc" / "blank.geojson").read_text())["features"] == []


def test_tiles_store_and_status_read_back_through_their_records(tmp_path):
    """What tissue writes reads back as TilesStoreAttrs / SlideStatus; an older store (no record_version)
    reads with defaults; a store of another kind is refused with its path."""
    from ghanet_pipeline.contracts.base import ContractError, read_json_record
    from ghanet_pipeline.contracts.tiles import SlideStatus, TilesStoreAttrs
    from ghanet_pipeline.io import store
    from ghanet_pipeline.slides.patch_reader import grid_from_store

    slide = pathlib.Path(__file__).resolve().parent / "data" / "slides" / "CMU-1-Small-Region.svs"
    tissue.run("cmu", slide, tmp_path, SETTINGS)
    path = tmp_path / "tiles" / "cmu.zarr"
    attrs = TilesStoreAttrs.from_attrs(dict(store.open_store(path).attrs), source=path)
    geometry = attrs.geometry(source=path)
    assert attrs.ok and store.open_store(path).attrs["record_version"] == TilesStoreAttrs.VERSION
    grid = grid_from_store(store.open_store(path), slide, path)
    assert grid.geometry == geometry and len(grid) == read_json_record(SlideStatus, tmp_path / "status" / "cmu.json").n_patches
    old = TilesStoreAttrs.from_attrs({"ghanet_store": "tiles", "status": "ok", "slide_id": "S", "read_level": 0,
                                      "patch_size": 224, "patch_size_read": 256})
    assert old.geometry().patch_size_read == 256 and old.n_fill_patches == 0
    with pytest.raises(ContractError, match="features.*not a tiles store"):
        TilesStoreAttrs.from_attrs({"ghanet_store": "features", "status": "ok", "slide_id": "S"}, source="x.zarr")
    with pytest.raises(ContractError, match="no patch geometry.*ghanet tissue"):
        TilesStoreAttrs.from_attrs({"ghanet_store": "tiles", "status": "failed", "slide_id": "S", "reason": "r"}).geometry()
