"""The tissue stage scored against the demo generator's truth: recall, junk, the lymphoid
aggregate, pale tissue, the slide edge, three pen colours, blur flags; and the GeoJSON, the
stain rules and the block-wise blur score on their own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from ghanet_pipeline.config import stage_settings
from ghanet_pipeline.demo import cohort as demo
from ghanet_pipeline.slides import patch_quality, qc, stain, synthetic, tiling, tissue
from ghanet_pipeline.slides.slide import open_slide

SETTINGS = stage_settings("tissue", None, None)
# full-size demo slides (2.3 x 1.7 and 2.5 x 1.65 mm); their truth masks are 8 um/px
RECIPES = (
    demo.SlideRecipe(slide_id="truth-a", width=4608, height=3456, tumour_fraction=0.3, seed_words=(11, 5, 0)),
    demo.SlideRecipe(slide_id="truth-b", width=5000, height=3300, tumour_fraction=0.3, seed_words=(11, 5, 2)),
)
TRUTH_TOLERANCE = 0.02  # a patch's truth fraction is known to a few of its 256 truth pixels


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("truth")
    out = []
    for recipe in RECIPES:
        demo.write_slide(recipe, folder / f"{recipe.slide_id}.svs", folder / f"{recipe.slide_id}.npz")
        truth = {k: v for k, v in np.load(folder / f"{recipe.slide_id}.npz").items()}
        truth = {k: v.astype(bool) if v.dtype == np.uint8 else v for k, v in truth.items()}
        result = tissue.run(recipe.slide_id, folder / f"{recipe.slide_id}.svs", folder / "out", SETTINGS)
        assert result.status == "ok"
        out.append((recipe, result, truth, folder))
    return out


def _truth_fractions(mask: np.ndarray, coords: np.ndarray, size: int, ds: int) -> np.ndarray:
    integral = tiling.integral_image(mask.astype(np.uint8))
    return np.array([tiling.box_fractions(integral, np.array([x]), np.array([y]), size, ds)[0, 0] for x, y in coords])


def _covered(coords: np.ndarray, size: int, shape: tuple[int, int], ds: int) -> np.ndarray:
    covered = np.zeros(shape, bool)
    for x, y in coords:
        covered[y // ds : -(-(y + size) // ds), x // ds : -(-(x + size) // ds)] = True
    return covered


def test_the_truth_holds_what_the_tests_need(slides):
    for _, _, truth, _ in slides:
        assert truth["aggregate"].sum() * 64 > 0.25e6  # > 0.25 mm^2 of aggregate on tissue
        assert truth["pale"].sum() > 500 and truth["blur"].sum() > 1000
        assert (truth["pen"] & truth["tissue"]).sum() > 500 and (truth["pen"] & ~truth["tissue"]).sum() > 500
        h, w = truth["tissue"].shape
        assert truth["tissue"][:, -1].any() or truth["tissue"][-1, :].any()  # tissue runs off the edge


def test_recall_on_the_truth(slides):
    """Tissue pieces of at least min_tissue_area, outside a 16 um fringe round ink and debris, are covered."""
    import cv2
    from skimage.morphology import remove_small_objects

    for recipe, result, truth, _ in slides:
        ds, size = int(truth["downsample"]), result.level.patch_size_level0
        dirt = (truth["pen"] | truth["debris"]).astype(np.uint8)
        fringe = cv2.dilate(dirt, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))).astype(bool)
        pieces = remove_small_objects(truth["tissue"], max_size=int(SETTINGS.min_tissue_area_um2 / 64))
        good = pieces & ~fringe
        covered = _covered(result.grid.coords, size, good.shape, ds)
        recall = (covered & good).sum() / good.sum()
        assert recall >= 0.97, (recipe.slide_id, recall)
        # every truth tissue pixel, fragments and fringes included
        every = truth["tissue"] & ~truth["pen"] & ~truth["debris"]
        assert (covered & every).sum() / every.sum() >= 0.93


def test_no_junk_on_the_truth(slides):
    """Patches more than 25 % pen or more than half glass: at most 0.5 % of them."""
    bad = total = 0
    for _, result, truth, _ in slides:
        ds, size, coords = int(truth["downsample"]), result.level.patch_size_level0, result.grid.coords
        pen = _truth_fractions(truth["pen"], coords, size, ds)
        glass = _truth_fractions(~truth["tissue"], coords, size, ds)
        bad += int(((pen > 0.25 + TRUTH_TOLERANCE) | (glass > 0.5 + TRUTH_TOLERANCE)).sum())
        total += len(coords)
    assert total > 250 and bad / total <= 0.005, (bad, total)


def test_dark_aggregate_is_tissue_and_keeps_every_patch(slides):
    for _, result, truth, _ in slides:
        ds, size = int(truth["downsample"]), result.level.patch_size_level0
        seg = result.segmentation
        h, w = (min(a, b) for a, b in zip(seg.tissue.shape, truth["aggregate"].shape))
        aggregate = truth["aggregate"][:h, :w]
        assert (seg.artifacts[:h, :w] & aggregate).sum() <= 0.01 * aggregate.sum()
        assert seg.tissue[:h, :w][aggregate].mean() > 0.95
        # every cell of the regular grid that is mostly aggregate is kept
        step = tiling.step_for(size, SETTINGS.overlap)
        xs = tiling.candidate_origins(result.level0_size[0], size, step, past_edge=True)
        ys = tiling.candidate_origins(result.level0_size[1], size, step, past_edge=True)
        on_aggregate = tiling.box_fractions(tiling.integral_image(truth["aggregate"].astype(np.uint8)), xs, ys, size, ds) >= 0.5
        assert on_aggregate.sum() >= 4
        kept = {tuple(c) for c in result.grid.coords.tolist()}
        lost = [(int(xs[j]), int(ys[i])) for i, j in zip(*np.nonzero(on_aggregate)) if (int(xs[j]), int(ys[i])) not in kept]
        assert not lost


def test_pale_tissue_and_the_slide_edge_get_patches(slides):
    for _, result, truth, folder in slides:
        ds, size = int(truth["downsample"]), result.level.patch_size_level0
        covered = _covered(result.grid.coords, size, truth["tissue"].shape, ds)
        assert (covered & truth["pale"]).sum() >= 0.9 * truth["pale"].sum()
        width, height = result.level0_size
        past = (result.grid.coords[:, 0] + size > width) | (result.grid.coords[:, 1] + size > height)
        assert past.any() and (result.grid.coords[:, 0] < width).all() and (result.grid.coords[:, 1] < height).all()
        attrs = dict(zarr.open_group(str(folder / "out" / "tiles" / f"{result.slide_id}.zarr"), mode="r").attrs)
        assert attrs["n_past_edge"] == int(past.sum()) and attrs["outside_slide_reads_as"] == "white"


def test_each_pen_colour_is_kept_out(slides):
    """Blue, green and black ink over tissue are out of the mask (the demo inks in order)."""
    for _, result, truth, _ in slides:
        seg = result.segmentation
        h, w = (min(a, b) for a, b in zip(seg.tissue.shape, truth["pen"].shape))
        pen_on_tissue = truth["pen"][:h, :w] & truth["tissue"][:h, :w]
        assert seg.artifacts[:h, :w][pen_on_tissue].mean() > 0.97
        assert (seg.tissue[:h, :w].astype(bool) & truth["pen"][:h, :w]).sum() <= 0.01 * truth["pen"].sum()


def test_blur_flag_precision_and_recall(slides):
    flagged_pos = flagged = positives = 0
    for _, result, truth, folder in slides:
        ds, size, coords = int(truth["downsample"]), result.level.patch_size_level0, result.grid.coords
        share = _truth_fractions(truth["blur"], coords, size, ds)
        flag = result.blur > tissue.blur_threshold(SETTINGS)
        positive = share >= 0.5
        sharp = share == 0
        flagged_pos += int((flag & positive).sum())
        positives += int(positive.sum())
        flagged += int((flag & (positive | sharp)).sum())  # patches half in the region count neither way
        group = zarr.open_group(str(folder / "out" / "tiles" / f"{result.slide_id}.zarr"), mode="r")
        n = len(coords)
        for name in ("tissue_fraction", "artifact_fraction", "blur"):
            assert group[name].shape == (n,) and group[name].dtype == np.float32, name
        np.testing.assert_allclose(group["blur"][:], result.blur)
        assert group.attrs["n_blurred"] == int(flag.sum()) and group.attrs["blur_dropped"] is False
        assert (group["tissue_fraction"][:] >= SETTINGS.min_tissue_fraction - 1e-6).all()
        assert (group["artifact_fraction"][:] <= SETTINGS.max_artifact_fraction + 1e-6).all()
    assert positives >= 10
    precision, recall = flagged_pos / max(flagged, 1), flagged_pos / positives
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


def test_max_blur_drops_the_blurred_patches(slides):
    recipe, result, _, folder = slides[0]
    strict = stage_settings("tissue", None, json.dumps({"max_blur": patch_quality.REPORT_BLUR}))
    again = tissue.process(recipe.slide_id, folder / f"{recipe.slide_id}.svs", strict, qc_image=False)
    flagged = result.blur > patch_quality.REPORT_BLUR
    assert flagged.sum() >= 3 and again.n_dropped_blur == int(flagged.sum())
    np.testing.assert_array_equal(again.grid.coords, result.grid.coords[~flagged])
    assert (again.blur <= patch_quality.REPORT_BLUR).all()


def test_geojson_is_the_mask_used(slides):
    for _, result, _, folder in slides:
        geo = json.loads((folder / "out" / "qc" / f"{result.slide_id}.geojson").read_text())
        assert geo["type"] == "FeatureCollection" and geo["features"]
        for feature in geo["features"]:
            assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
            for ring in feature["geometry"]["coordinates"]:
                assert len(ring) >= 4 and ring[0] == ring[-1]
        group = zarr.open_group(str(folder / "out" / "tiles" / f"{result.slide_id}.zarr"), mode="r")
        mask = group["tissue_mask"][:].astype(bool)
        drawn = qc.rasterize(geo["features"], mask.shape, group.attrs["mask_downsample"]).astype(bool)
        assert (drawn & mask).sum() / (drawn | mask).sum() >= 0.99
        # the pen is cut out of what QC shows, holes too
        assert not (drawn & result.segmentation.artifacts).any()


# ----------------------------------------------------------------------------- rules alone


def _disc(image: np.ndarray, cy: int, cx: int, r: int, colour) -> None:
    yy, xx = np.ogrid[: image.shape[0], : image.shape[1]]
    image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = colour


def test_stain_rules_keep_dark_stain_and_take_ink():
    """At 8 um/px: a dark purple (lymphoid) disc and a dark pink one are stain; blue, green,
    black and brown are not, whatever their size."""
    image = np.full((200, 300, 3), (244, 243, 241), np.uint8)
    _disc(image, 50, 50, 35, (72, 46, 122))  # lymphocytes, 0.25 mm^2
    _disc(image, 50, 150, 35, (110, 40, 100))  # dark eosinophilic nest
    _disc(image, 50, 250, 20, (60, 100, 210))  # blue ink
    _disc(image, 150, 50, 20, (60, 150, 95))  # green ink
    _disc(image, 150, 150, 40, (40, 40, 45))  # black ink, 0.32 mm^2: larger than any debris
    _disc(image, 150, 250, 6, (110, 80, 50))  # brown debris
    pen, debris, maps = stain.artifact_masks(image, 8.0, True, True)
    artifacts = pen | debris
    assert maps.stained[50, 50] and maps.stained[50, 150]
    assert not artifacts[20:80, 20:180].any()
    for y, x in ((50, 250), (150, 50), (150, 150), (150, 250)):
        assert artifacts[y, x], (y, x)
    assert pen[50, 250] and pen[150, 50] and pen[150, 150] and debris[150, 250]
    # rgb2hed agrees that the dark disc is haematoxylin, the pink one more eosin
    he = stain.haematoxylin_eosin(image)
    assert he[50, 50, 0] > he[50, 150, 0] and he[50, 150, 1] > he[50, 50, 1]


def test_blur_score_matches_skimage_per_patch_and_threads_agree(tmp_path):
    """The block-wise dask score equals skimage.measure.blur_effect on each patch's pixels."""
    from skimage.measure import blur_effect

    rng = np.random.default_rng(3)
    import cv2

    texture = cv2.GaussianBlur((rng.random((1100, 1500)) * 255).astype(np.uint8), (0, 0), 1.2)
    rgb = np.stack([texture, (texture * 0.6).astype(np.uint8), 200 - texture // 3], axis=-1)
    rgb[:, 800:] = cv2.GaussianBlur(rgb[:, 800:], (0, 0), 4)  # the right part out of focus
    synthetic.write_aperio_svs_from_array(tmp_path / "b.svs", np.ascontiguousarray(rgb), mpp=0.5, levels=2)
    slide = open_slide(tmp_path / "b.svs")
    coords = np.array([[x, y] for y in range(0, 1100, 256) for x in range(0, 1500, 256)], np.int64)
    one, plan = patch_quality.blur_scores(slide, str(tmp_path / "b.svs"), 0.5, coords, 256, 1.0, 0.1, threads=1)
    two, _ = patch_quality.blur_scores(slide, str(tmp_path / "b.svs"), 0.5, coords, 256, 1.0, 0.1, threads=2)
    np.testing.assert_allclose(one, two, atol=1e-6)
    side = int(256 / plan.downsample)
    for (x, y), score in zip(coords, one):
        if x + 256 > 1500 or y + 256 > 1100:
            continue
        grey = patch_quality._read_block(slide, str(tmp_path / "b.svs"), plan, int(y / plan.downsample), int(x / plan.downsample), side, side)
        assert score == pytest.approx(blur_effect(grey), abs=0.03)
    inside = (coords[:, 0] + 256 <= 1500) & (coords[:, 1] + 256 <= 1100)
    sharp = one[inside & (coords[:, 0] + 256 <= 800)]
    soft = one[inside & (coords[:, 0] >= 800)]
    assert sharp.max() < soft.min()
    slide.close()


def test_grid_runs_past_the_edge_and_fills_gaps():
    # a tissue band in the strip past the last whole grid cell (x 160-180 of a 180 px wide slide)
    mask = np.zeros((40, 45), np.uint8)
    mask[:, 39:] = 1  # mask px = 4 level-0 px: tissue from x = 156
    plain = tiling.patch_grid(mask, None, 4.0, (180, 160), 32, 32, 0.5)
    assert len(plain.coords) == 0  # the cell at 128 holds 4 of 32 columns
    edge = tiling.patch_grid(mask, None, 4.0, (180, 160), 32, 32, 0.5, past_edge=True)
    assert len(edge.coords) == 5 and (edge.coords[:, 0] == 160).all() and edge.n_past_edge == 5
    # the part outside the slide counts as no tissue: 20 of 32 columns
    np.testing.assert_allclose(edge.fractions, 20 / 32)
    # min_tissue_fraction keeps its meaning: 0.7 of the whole patch is more than there is
    assert len(tiling.patch_grid(mask, None, 4.0, (180, 160), 32, 32, 0.7, past_edge=True).coords) == 0
    # a thin diagonal strand: the shifted patches of the gap filler reach it
    strand = np.zeros((64, 64), np.uint8)
    for i in range(64):
        strand[i, max(0, i - 3) : i + 3] = 1
    base = tiling.patch_grid(strand, None, 1.0, (64, 64), 8, 8, 0.5)
    filled = tiling.patch_grid(strand, None, 1.0, (64, 64), 8, 8, 0.5, fill_min_new=0.02, fill_max_overlap=0.75)
    assert len(filled.coords) > len(base.coords) and filled.n_fill == len(filled.coords) - len(base.coords)
    assert (filled.fractions >= 0.5).all()
    np.testing.assert_array_equal(np.lexsort((filled.coords[:, 0], filled.coords[:, 1])), np.arange(len(filled.coords)))
