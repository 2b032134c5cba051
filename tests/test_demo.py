"""The synthetic demo cohort: what it writes, that it is deterministic, and that the signal is real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
from lifelines.utils import concordance_index

from ghanet_pipeline import cli
from ghanet_pipeline.demo import cohort as demo
from ghanet_pipeline.io import sheet

PATIENTS, SEED, FOLDS = 6, 0, 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """One small cohort written through the command line, shared by the tests of this file."""
    out = tmp_path_factory.mktemp("demo") / "cohort"
    rc = cli.main(["demo-cohort", str(out), "--patients", str(PATIENTS), "--seed", str(SEED),
                   "--folds", str(FOLDS), "--threads", "2"])
    assert rc == 0
    return out


def test_plan_is_what_gets_written(cohort):
    planned = demo.plan(PATIENTS, SEED, cohort)
    assert list(planned.columns) == ["slide_id", "case_id", "path", "mpp"]
    assert planned["mpp"].isna().all()
    assert planned["path"].tolist() == [str(cohort / "slides" / f"{s}.svs") for s in planned.slide_id]
    written = sorted(p.name for p in (cohort / "slides").iterdir())
    assert written == sorted(f"{s}.svs" for s in planned.slide_id)
    truth = sorted(p.name for p in (cohort / "truth").glob("*.npz"))
    assert truth == sorted(f"{s}.npz" for s in planned.slide_id)
    # the sample sheet lists the same slides, with paths relative to the cohort folder
    samples = sheet.read_samples(cohort / "samples.csv")
    assert samples.slide_id.tolist() == planned.slide_id.tolist()
    assert samples.case_id.tolist() == planned.case_id.tolist()
    assert samples.path.tolist() == planned.path.tolist()
    assert (cohort / "samples.csv").read_text().splitlines()[1].split(",")[2] == "slides/DEMO-0001-01.svs"
    assert not list(cohort.rglob("*.tmp-*"))


def test_plan_ids_and_two_slide_patients():
    table = demo.plan(200, 3, "out")
    cases = table.case_id.unique()
    assert list(cases) == [f"DEMO-{i:04d}" for i in range(1, 201)]
    counts = table.groupby("case_id").size()
    assert set(counts) == {1, 2}
    assert 0.15 < (counts == 2).mean() < 0.35
    assert table.slide_id.str.fullmatch(r"DEMO-\d{4}-0[12]").all() and table.slide_id.is_unique
    assert table.equals(demo.plan(200, 3, "out"))
    assert not table.equals(demo.plan(200, 4, "out"))


def test_slides_open_as_aperio(cohort):
    slide_id = demo.plan(PATIENTS, SEED, cohort).slide_id[0]
    with openslide.OpenSlide(str(cohort / "slides" / f"{slide_id}.svs")) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(demo.MPP)
        assert slide.properties["openslide.objective-power"] == "20"
        assert slide.level_count >= 3
        w, h = slide.dimensions
        assert 4096 <= w <= 5120 and 3072 <= h <= 3840
        truth = np.load(cohort / "truth" / f"{slide_id}.npz")
        assert truth["level0_size"].tolist() == [w, h]
        assert truth["tissue"].shape == (-(-h // 16), -(-w // 16))
        thumb = np.asarray(slide.get_thumbnail(truth["tissue"].shape[::-1]).convert("RGB")).astype(int)
    # glass is bright and grey, tissue is pink/purple (saturated), as the truth masks say
    tissue = truth["tissue"].astype(bool)
    glass = ~tissue & ~truth["pen"].astype(bool) & ~truth["debris"].astype(bool) & ~truth["holes"].astype(bool)
    assert tissue.mean() > 0.1 and glass.mean() > 0.3
    saturation = thumb.max(axis=2) - thumb.min(axis=2)
    assert thumb[glass].mean() > 225 and np.median(saturation[glass]) < 15
    assert np.median(saturation[tissue]) > 50
    for layer in ("holes", "pen", "debris", "tumour"):
        assert truth[layer].any(), f"no {layer} in the truth masks"
    # the pen lies partly on glass and partly on tissue
    pen = truth["pen"].astype(bool)
    assert (pen & tissue).any() and (pen & ~truth["tissue"].astype(bool)).any()
    # debris is dark
    debris = truth["debris"].astype(bool)
    assert thumb[debris].mean() < 120


def test_tumour_texture_is_darker_and_denser(cohort):
    """The hidden risk shows in pixels: tumour regions are darker purple than stroma."""
    slide_id = demo.plan(PATIENTS, SEED, cohort).slide_id[0]
    truth = np.load(cohort / "truth" / f"{slide_id}.npz")
    with openslide.OpenSlide(str(cohort / "slides" / f"{slide_id}.svs")) as slide:
        level1 = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB")).astype(float)
    import cv2

    shape = level1.shape[1::-1]
    tumour = cv2.resize(truth["tumour"], shape, interpolation=cv2.INTER_NEAREST).astype(bool)
    stroma = cv2.resize((truth["tissue"] & ~truth["tumour"] & ~truth["pen"] & ~truth["debris"]).astype(np.uint8), shape,
                        interpolation=cv2.INTER_NEAREST).astype(bool)
    tumour &= ~cv2.resize(truth["pen"] | truth["debris"], shape, interpolation=cv2.INTER_NEAREST).astype(bool)
    assert tumour.sum() > 1000 and stroma.sum() > 1000
    assert level1[tumour].mean() < level1[stroma].mean() - 25
    # hematoxylin: the red channel drops most in tumour
    assert level1[tumour][:, 0].mean() < level1[stroma][:, 0].mean() - 40


def test_cohort_table_is_mcat_format(cohort):
    table = pd.read_csv(cohort / "cohort.csv")
    planned = demo.plan(PATIENTS, SEED, cohort)
    assert table.columns[:4].tolist() == ["case_id", "slide_id", "survival_months", "censorship"]
    assert table.slide_id.tolist() == planned.slide_id.tolist()
    assert table.case_id.tolist() == planned.case_id.tolist()
    assert set(table.censorship) <= {0, 1} and table.censorship.dtype.kind == "i"
    assert (table.survival_months > 0).all() and table.survival_months.dtype.kind == "f"
    assert {"age", "is_female"} <= set(table.columns)
    rnaseq = [c for c in table.columns if c.endswith("_rnaseq")]
    cnv = [c for c in table.columns if c.endswith("_cnv")]
    assert len(rnaseq) >= 30 and len(cnv) >= 5
    assert all(table[c].dtype.kind == "f" for c in rnaseq)
    assert all(table[c].dtype.kind == "i" and table[c].between(-2, 2).all() for c in cnv)
    # patient values repeat on every slide row of the patient
    per_case = table.drop(columns="slide_id").groupby("case_id").nunique()
    assert (per_case <= 1).all().all()
    # every gene column belongs to some family of signatures.csv; families as in the real file
    signatures = pd.read_csv(cohort / "signatures.csv", keep_default_na=False)
    assert list(signatures.columns) == list(demo.FAMILIES)
    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "genomics" / "signatures.csv"
    if real.is_file():
        assert list(signatures.columns) == list(pd.read_csv(real, nrows=0).columns)
    genes_by_family = {f: {g for g in signatures[f] if g} for f in signatures.columns}
    all_genes = set().union(*genes_by_family.values())
    assert {c.rsplit("_", 1)[0] for c in rnaseq + cnv} == all_genes
    assert 30 <= len(all_genes) <= 60
    shared = [g for g in all_genes if sum(g in s for s in genes_by_family.values()) > 1]
    assert shared, "some genes should sit in two families"
    assert all(len(s) >= 3 for s in genes_by_family.values())


def test_splits_are_patient_level_folds(cohort):
    cases = set(demo.plan(PATIENTS, SEED, cohort).case_id)
    table = pd.read_csv(cohort / "cohort.csv").drop_duplicates("case_id").set_index("case_id")
    files = sorted((cohort / "splits").glob("splits_*.csv"))
    assert [f.name for f in files] == [f"splits_{k}.csv" for k in range(FOLDS)]
    vals = []
    for f in files:
        split = pd.read_csv(f, index_col=0)
        assert list(split.columns) == ["train", "val"]
        train, val = set(split.train.dropna()), set(split.val.dropna())
        assert train and val and not train & val and train | val == cases
        vals.append(val)
    assert set().union(*vals) == cases and sum(map(len, vals)) == len(cases)


def test_splits_stratified_with_events_in_every_fold():
    patients = demo.patient_table(40, 7)
    folds = demo.stratified_splits(patients, 5, 7)
    events = set(patients.case_id[patients.censorship == 0])
    val_sets = [set(v) for _, v in folds]
    assert all(v & events for v in val_sets)
    assert sorted(len(v) for v in val_sets) == [8] * 5
    assert set().union(*val_sets) == set(patients.case_id)
    with pytest.raises(ValueError, match="folds"):
        demo.stratified_splits(patients, 41, 7)


def test_hidden_risk_drives_survival_genes_and_tumour_share():
    patients = demo.patient_table(60, 11)
    events = 1 - patients.censorship
    assert 0.2 < patients.censorship.mean() < 0.5
    # higher risk, shorter survival
    assert concordance_index(patients.survival_months, -patients.risk, events) > 0.65
    genomics = demo.genomics_table(patients, 11)
    risk = patients.risk.to_numpy()
    assert abs(np.corrcoef(risk, genomics["ONCA1_rnaseq"])[0, 1]) > 0.6
    assert abs(np.corrcoef(risk, genomics["TFA1_rnaseq"])[0, 1]) > 0.6
    assert abs(np.corrcoef(risk, genomics["CGFA1_rnaseq"])[0, 1]) < 0.4  # a noise gene
    slides = demo.plan(60, 11, "out")
    recipes = demo.slide_recipes(slides, patients, 11)
    share = pd.Series([r.tumour_fraction for r in recipes], index=slides.case_id).groupby(level=0).mean()
    assert np.corrcoef(patients.set_index("case_id").risk.loc[share.index], share)[0, 1] > 0.7


def test_truth_files_agree_with_the_tables(cohort):
    truth = pd.read_csv(cohort / "truth" / "patients.csv")
    table = pd.read_csv(cohort / "cohort.csv").drop_duplicates("case_id").set_index("case_id")
    assert truth.case_id.tolist() == sorted(table.index)
    assert np.allclose(truth.survival_months, table.loc[truth.case_id, "survival_months"])
    # tumour share measured on the truth masks follows the hidden risk's target share
    patients = demo.patient_table(PATIENTS, SEED)
    recipes = {r.slide_id: r for r in demo.slide_recipes(demo.plan(PATIENTS, SEED, cohort), patients, SEED)}
    for slide_id, recipe in recipes.items():
        masks = np.load(cohort / "truth" / f"{slide_id}.npz")
        measured = masks["tumour"].sum() / masks["tissue"].sum()
        assert measured == pytest.approx(recipe.tumour_fraction, abs=0.03)
    assert np.corrcoef(truth.risk, truth.tumour_share)[0, 1] > 0.7


def test_same_seed_same_bytes_other_seed_differs(cohort, tmp_path):
    """A second run with the same seed writes the same tables and the same slide, byte for byte."""
    planned = demo.plan(PATIENTS, SEED, cohort)
    shares = {s: float(np.load(cohort / "truth" / f"{s}.npz")["tumour"].mean()) for s in planned.slide_id}
    again = tmp_path / "again"
    demo.write_tables(again, PATIENTS, SEED, FOLDS, shares)
    for name in ("cohort.csv", "samples.csv", "signatures.csv", *(f"splits/splits_{k}.csv" for k in range(FOLDS))):
        assert (again / name).read_bytes() == (cohort / name).read_bytes(), name
    recipes = demo.slide_recipes(planned, demo.patient_table(PATIENTS, SEED), SEED)
    recipe = recipes[-1]
    demo.write_slide(recipe, again / f"{recipe.slide_id}.svs", again / f"{recipe.slide_id}.npz")
    assert (again / f"{recipe.slide_id}.svs").read_bytes() == (cohort / "slides" / f"{recipe.slide_id}.svs").read_bytes()
    first, second = np.load(cohort / "truth" / f"{recipe.slide_id}.npz"), np.load(again / f"{recipe.slide_id}.npz")
    assert sorted(first.files) == sorted(second.files)
    assert all(np.array_equal(first[k], second[k]) for k in first.files)
    # another seed: other survival, other genes, other pixels
    other = demo.patient_table(PATIENTS, SEED + 1)
    mine = demo.patient_table(PATIENTS, SEED)
    assert not np.allclose(other.survival_months, mine.survival_months)
    assert not demo.genomics_table(other, SEED + 1).equals(demo.genomics_table(mine, SEED))
    other_recipe = demo.slide_recipes(demo.plan(PATIENTS, SEED + 1, "x"), other, SEED + 1)[0]
    rgb_other, _ = demo.render_slide(other_recipe)
    with openslide.OpenSlide(str(cohort / "slides" / "DEMO-0001-01.svs")) as a:
        pixels = np.asarray(a.read_region((0, 0), 0, (1024, 1024)).convert("RGB"))
    assert not np.array_equal(pixels, rgb_other[:1024, :1024])


def test_too_few_patients_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["demo-cohort", str(tmp_path / "x"), "--patients", "3", "--folds", "5"])
    assert rc == 2
    assert "too few" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
