"""Write a synthetic demo cohort: Aperio slides, sample sheet, MCAT cohort table, signatures, splits.

A hidden per-patient risk factor r ~ N(0, 1) drives three things at once: the share of a
dense, dark "tumour" texture in the patient's slides, the expression of a few genes in three
of the six families, and the hazard of the (censored) survival time. Slide-only,
genomics-only and multimodal models therefore all have real signal to find. Each slide shows
white glass with noise, several irregular H&E-like tissue pieces (pink stroma with fibres and
sparse nuclei), one running off the slide's edge, holes, a dense dark lymphoid aggregate
(> 0.25 mm^2), a pale loose region, an out-of-focus region, pen strokes of three colours
(blue and green arcs, a black stroke across tissue) and dark debris: what a tissue stage must
keep (dark aggregate, pale tissue, the edge) and drop (ink, debris), with truth masks.

Output (OUT): ``slides/{slide_id}.svs``, ``samples.csv`` (paths relative to OUT; written
last, so its presence means the slides are complete), ``cohort.csv``, ``signatures.csv``,
``splits/splits_{k}.csv``, and ``truth/`` (``{slide_id}.npz`` masks at 8 um/px: tissue,
holes, tumour, pen, debris, aggregate, pale, blur; and ``patients.csv`` with the hidden risk)
for tests. Everything is a pure function of the seed.
"""

from __future__ import annotations

import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ghanet_pipeline.genomics.folds import Fold, deal_round_robin, folds_from_assignment, split_csv
from ghanet_pipeline.io import store

log = logging.getLogger(__name__)

MPP = 0.5  # um per level-0 pixel of every demo slide
APP_MAG = 20
MASK_DOWNSAMPLE = 16  # level-0 px per truth-mask px (8 um/px)
TWO_SLIDE_FRACTION = 0.25
HAZARD_BETA = 1.3  # log-hazard per unit of hidden risk
BASE_MEDIAN_MONTHS = 30.0
CENSOR_RATE = 1 / 100.0  # per month, independent of risk
MAX_FOLLOW_UP = 180.0

FAMILIES = (
    "Tumor Suppressor Genes",
    "Oncogenes",
    "Protein Kinases",
    "Cell Differentiation Markers",
    "Transcription Factors",
    "Cytokines and Growth Factors",
)
# Synthetic gene symbols per family; a few sit in two families, as real genes do.
_FAMILY_GENES: dict[str, list[str]] = {
    "Tumor Suppressor Genes": ["SUPA1", "SUPB2", "SUPC3", "SUPD4", "SUPE5", "SUPF6", "DUAL1"],
    "Oncogenes": ["ONCA1", "ONCB2", "ONCC3", "ONCD4", "ONCE5", "ONCF6", "ONCG7", "KINOV1"],
    "Protein Kinases": ["KINA1", "KINB2", "KINC3", "KIND4", "KINE5", "KINOV1", "KINOV2"],
    "Cell Differentiation Markers": ["CDMA1", "CDMB2", "CDMC3", "CDMD4", "CDME5", "DUAL2"],
    "Transcription Factors": ["TFA1", "TFB2", "TFC3", "TFD4", "TFE5", "TFF6", "DUAL1", "KINOV2"],
    "Cytokines and Growth Factors": ["CGFA1", "CGFB2", "CGFC3", "CGFD4", "DUAL2"],
}
# rnaseq genes whose expression follows the hidden risk (loading), the rest are noise
_RISK_GENES = {"ONCA1": 0.9, "ONCB2": 0.7, "ONCC3": -0.6, "KINA1": 0.8, "KINOV1": 0.6, "TFA1": -0.8, "TFB2": 0.7}
# genes that also have copy-number columns; ONCA1's copy number follows the risk
_CNV_GENES = ("SUPA1", "SUPB2", "SUPC3", "SUPD4", "ONCA1", "ONCB2", "ONCD4", "KINB2")


# ----------------------------------------------------------------------------- planning


def _case_id(index: int) -> str:
    return f"DEMO-{index + 1:04d}"


def _slides_per_patient(patients: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    return np.where(rng.random(patients) < TWO_SLIDE_FRACTION, 2, 1)


def plan(patients: int, seed: int, out_dir: str | Path) -> pd.DataFrame:
    """The slides the generator writes (``slide_id``, ``case_id``, ``path``, ``mpp``), without writing.

    ``path`` is ``OUT/slides/{slide_id}.svs``; ``mpp`` is empty (the slides record it).
    """
    if patients < 1:
        raise ValueError(f"--patients must be >= 1, got {patients}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    rows = []
    for index, count in enumerate(_slides_per_patient(patients, seed)):
        case_id = _case_id(index)
        for k in range(int(count)):
            slide_id = f"{case_id}-{k + 1:02d}"
            rows.append((slide_id, case_id, str(Path(out_dir) / "slides" / f"{slide_id}.svs"), None))
    return pd.DataFrame(rows, columns=["slide_id", "case_id", "path", "mpp"])


# ----------------------------------------------------------------------------- patients


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-x))


def patient_table(patients: int, seed: int) -> pd.DataFrame:
    """Hidden risk, survival, censoring and clinical values of each patient."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    risk = rng.standard_normal(patients)
    base_rate = np.log(2) / BASE_MEDIAN_MONTHS
    event_time = rng.exponential(1.0 / (base_rate * np.exp(HAZARD_BETA * risk)))
    censor_time = np.minimum(rng.exponential(1.0 / CENSOR_RATE, patients), MAX_FOLLOW_UP)
    observed = np.minimum(event_time, censor_time)
    censorship = (censor_time < event_time).astype(int)
    age = np.clip(np.round(65 + 9 * rng.standard_normal(patients) + 2 * risk), 30, 90).astype(int)
    return pd.DataFrame(
        {
            "case_id": [_case_id(i) for i in range(patients)],
            "risk": risk,
            "survival_months": np.maximum(np.round(observed, 2), 0.1),
            "censorship": censorship,
            "age": age,
            "is_female": (rng.random(patients) < 0.45).astype(int),
        }
    )


def signatures_table() -> pd.DataFrame:
    """signatures.csv: one column per family, genes listed down, blank-padded."""
    longest = max(len(g) for g in _FAMILY_GENES.values())
    return pd.DataFrame({f: _FAMILY_GENES[f] + [""] * (longest - len(_FAMILY_GENES[f])) for f in FAMILIES})


def all_genes() -> list[str]:
    return sorted({g for genes in _FAMILY_GENES.values() for g in genes})


def genomics_table(patient: pd.DataFrame, seed: int) -> pd.DataFrame:
    """``<GENE>_rnaseq`` (z-scored-like floats) and ``<GENE>_cnv`` (-2..2) per patient."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    n = len(patient)
    risk = patient["risk"].to_numpy()
    columns: dict[str, np.ndarray] = {}
    for gene in all_genes():
        loading = _RISK_GENES.get(gene, 0.0)
        noise = rng.standard_normal(n)
        value = loading * risk + np.sqrt(max(1.0 - loading**2, 0.3)) * noise
        columns[f"{gene}_rnaseq"] = np.round(value, 4)
        if gene in _CNV_GENES:
            drift = 0.9 * risk if gene == "ONCA1" else 0.0
            cnv = np.clip(np.round(drift + 0.8 * rng.standard_normal(n)), -2, 2).astype(int)
            columns[f"{gene}_cnv"] = cnv
    table = pd.DataFrame(columns)
    return table[sorted(table.columns)]


def cohort_table(slides: pd.DataFrame, patient: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The MCAT-format table: one row per slide, patient values repeated.

    ``slide_id`` equals the sample sheet's (MCAT's own tables use the file name, with ``.svs``).
    """
    per_patient = pd.concat([patient.drop(columns="risk"), genomics_table(patient, seed)], axis=1)
    table = slides[["case_id", "slide_id"]].merge(per_patient, on="case_id", how="left", validate="many_to_one")
    return table


def stratified_splits(patient: pd.DataFrame, folds: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Patient-level folds stratified by survival bin (quartiles of event times) x censorship.

    The dealing is the genomics stage's (:func:`~ghanet_pipeline.genomics.folds.deal_round_robin`);
    the demo keeps its own strata, shuffle and starting fold so its split files stay as published.
    """
    if folds < 2 or folds > len(patient):
        raise ValueError(f"--folds must be between 2 and the number of patients ({len(patient)}), got {folds}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    times = patient["survival_months"].to_numpy()
    events = patient["censorship"].to_numpy() == 0
    edges = np.quantile(times[events], [0.25, 0.5, 0.75]) if events.any() else np.quantile(times, [0.25, 0.5, 0.75])
    label = np.digitize(times, edges) * 2 + patient["censorship"].to_numpy()
    order = np.lexsort((rng.random(len(patient)), label))  # by stratum, shuffled within
    fold_of = deal_round_robin(order, folds, start=int(rng.integers(folds)))
    made = folds_from_assignment(patient["case_id"].tolist(), fold_of, folds)
    return [(sorted(f.train), sorted(f.val)) for f in made]


# ----------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class SlideRecipe:
    slide_id: str
    width: int
    height: int
    tumour_fraction: float
    seed_words: tuple[int, ...]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth noise of unit std whose features are about ``scale`` px wide (made small, resized up)."""
    import cv2

    h, w = shape
    step = max(scale / 3.0, 1.0)
    small = rng.standard_normal((max(2, int(h / step) + 3), max(2, int(w / step) + 3))).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    big -= big.mean()
    return big / (big.std() + 1e-6)


def _tissue_fields(rng: np.random.Generator, mh: int, mw: int, tumour_fraction: float) -> dict[str, np.ndarray]:
    """Coarse (8 um/px) signed fields: tissue pieces, holes and tumour nests are where a field is > 0."""
    import cv2

    yy, xx = np.mgrid[0:mh, 0:mw].astype(np.float32)
    n_pieces = int(rng.integers(2, 5))
    pieces = np.full((mh, mw), -10, np.float32)
    centres = []
    landscape = mw >= mh
    for i in range(n_pieces):
        # pieces sit in separate cells of a row (landscape slides) or a column
        along, across = (mw, mh) if landscape else (mh, mw)
        c_along = (i + 0.5 + rng.uniform(-0.08, 0.08)) * along / n_pieces
        c_across = across * rng.uniform(0.4, 0.6)
        a = along / n_pieces * rng.uniform(0.36, 0.45)
        if i == n_pieces - 1:  # the last piece runs off the right (or bottom) edge of the slide
            c_along = along - a * rng.uniform(0.45, 0.7)
        b = across * rng.uniform(0.28, 0.36)
        cx, cy = (c_along, c_across) if landscape else (c_across, c_along)
        theta = rng.uniform(-0.5, 0.5) + (0 if landscape else np.pi / 2)
        c, s = np.cos(theta), np.sin(theta)
        u = ((xx - cx) * c + (yy - cy) * s) / a
        v = (-(xx - cx) * s + (yy - cy) * c) / b
        pieces = np.maximum(pieces, 1.0 - np.sqrt(u * u + v * v))
        centres.append((cx, cy, a, b))
    pieces += 0.18 * _smooth_noise(rng, (mh, mw), 12.0) + 0.04 * _smooth_noise(rng, (mh, mw), 3.0)
    # holes: a few rounded gaps well inside tissue
    inner = cv2.distanceTransform((pieces > 0).astype(np.uint8), cv2.DIST_L2, 5)
    holes = np.full((mh, mw), -10, np.float32)
    candidates = np.argwhere(inner > 14)
    for _ in range(int(rng.integers(1, 4)) if len(candidates) else 0):
        y, x = candidates[rng.integers(len(candidates))]
        r = rng.uniform(5, 10)
        blob = 1.0 - np.sqrt(((yy - y) / (r * rng.uniform(0.7, 1.3))) ** 2 + ((xx - x) / r) ** 2)
        holes = np.maximum(holes, blob)
    holes += 0.15 * _smooth_noise(rng, (mh, mw), 4.0)
    tissue = (pieces > 0) & (holes <= 0)
    # tumour: nests of a smooth field, thresholded to give the wanted share of tissue
    nests = _smooth_noise(rng, (mh, mw), 14.0)
    values = nests[tissue]
    threshold = float(np.quantile(values, 1.0 - tumour_fraction)) if values.size else 1e9
    return {
        "pieces": pieces.astype(np.float32),
        "holes": holes.astype(np.float32),
        "nests": (nests - threshold).astype(np.float32),
        "centres": np.asarray(centres, np.float32),
    }


def _draw_pen(rng: np.random.Generator, shape: tuple[int, int], centres: np.ndarray) -> np.ndarray:
    """A thick arc round one tissue piece, so it lies partly on glass and partly on tissue."""
    import cv2

    h, w = shape
    pen = np.zeros((h, w), np.uint8)
    cx, cy, a, b = centres[rng.integers(len(centres))] * MASK_DOWNSAMPLE
    margin = 200
    rx = min(a * rng.uniform(0.85, 1.05), cx - margin, w - margin - cx)
    ry = min(b * rng.uniform(0.85, 1.05), cy - margin, h - margin - cy)
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.linspace(0, rng.uniform(2.0, 3.6), 60)
    wobble = 1 + 0.05 * np.sin(angles * rng.uniform(2, 4) + rng.uniform(0, 6))
    points = np.stack([cx + max(rx, 100) * wobble * np.cos(angles), cy + max(ry, 100) * wobble * np.sin(angles)], 1)
    thickness = int(rng.integers(110, 170))
    cv2.polylines(pen, [np.round(points).astype(np.int32)], False, 255, thickness, cv2.LINE_AA)
    return pen


def _draw_stroke(rng: np.random.Generator, shape: tuple[int, int], centres: np.ndarray) -> np.ndarray:
    """A black marker stroke straight across one tissue piece, from glass to glass."""
    import cv2

    h, w = shape
    pen = np.zeros((h, w), np.uint8)
    cx, cy, a, b = centres[rng.integers(len(centres))] * MASK_DOWNSAMPLE
    theta = rng.uniform(0.3, 1.2) * (1 if rng.random() < 0.5 else -1)
    reach = 1.3 * max(a, b)
    p0 = (int(cx - reach * np.cos(theta)), int(cy - reach * np.sin(theta)))
    p1 = (int(cx + reach * np.cos(theta)), int(cy + reach * np.sin(theta)))
    cv2.line(pen, p0, p1, 255, int(rng.integers(70, 110)), cv2.LINE_AA)
    return pen


def _pick_spot(rng: np.random.Generator, allowed: np.ndarray, radius: float) -> tuple[int, int]:
    """(y, x) of a mask pixel at least ``radius`` from everything not ``allowed`` (the deepest one when none is)."""
    import cv2

    depth = cv2.distanceTransform(np.pad(allowed.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    spots = np.argwhere(depth >= radius)
    if len(spots) == 0:
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        return int(y), int(x)
    y, x = spots[rng.integers(len(spots))]
    return int(y), int(x)


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float, rng: np.random.Generator) -> np.ndarray:
    """A slightly irregular disc (signed field, > 0 inside) at mask resolution."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    squash = rng.uniform(0.8, 1.2)
    d = np.sqrt(((yy - centre[0]) * squash) ** 2 + ((xx - centre[1]) / squash) ** 2) / radius
    return (1.0 - d + 0.06 * _smooth_noise(rng, shape, 8.0)).astype(np.float32)


def _draw_debris(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Dark specks and blobs (dust, pigment, folded fragments) anywhere on the slide."""
    import cv2

    h, w = shape
    debris = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(3, 7))):
        x, y = int(rng.uniform(0.05, 0.95) * w), int(rng.uniform(0.05, 0.95) * h)
        for _ in range(int(rng.integers(1, 4))):  # a blob is a clump of ellipses
            axes = (int(rng.uniform(20, 80)), int(rng.uniform(15, 50)))
            centre = (x + int(rng.normal(0, 30)), y + int(rng.normal(0, 30)))
            cv2.ellipse(debris, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(10, 30))):  # specks
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        cv2.circle(debris, centre, int(rng.integers(3, 9)), 255, -1, cv2.LINE_AA)
    return debris


def _soft_mask(field: np.ndarray, shape: tuple[int, int], factor: float, edge_px: float = 3.0) -> np.ndarray:
    """Upsample a coarse signed field by ``factor`` to ``shape``; a [0, 1] mask with an ``edge_px`` wide edge."""
    import cv2

    gy, gx = np.gradient(field)
    near = np.abs(field) < 0.1
    slope = float(np.median(np.hypot(gx, gy)[near])) / factor if near.any() else 1.0 / factor
    big = cv2.resize(field, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    big *= 1.0 / (edge_px * max(slope, 1e-6))
    big += 0.5
    return np.clip(big, 0.0, 1.0, out=big)


def _nuclei(points: np.ndarray, sigma: tuple[float, float], threshold: float) -> np.ndarray:
    """Soft nucleus masks from point impulses: Gaussian blobs cut at a level (size varies with amplitude)."""
    import cv2

    blurred = cv2.GaussianBlur(points, (0, 0), sigmaX=sigma[0], sigmaY=sigma[1])
    cut = threshold / (2 * np.pi * sigma[0] * sigma[1])
    blurred -= cut
    blurred *= 1.0 / (0.5 * cut)
    return np.clip(blurred, 0.0, 1.0, out=blurred)


# RGB colours of the stain model
GLASS = (244.0, 243.0, 241.0)
EOSIN = (234.0, 156.0, 196.0)
TUMOUR_CYTOPLASM = (196.0, 128.0, 190.0)
STROMA_NUCLEUS = (120.0, 74.0, 160.0)
LYMPHOCYTE = (72.0, 46.0, 122.0)
TUMOUR_NUCLEUS = (82.0, 40.0, 122.0)
DEBRIS = (46.0, 40.0, 36.0)
PEN_INKS = ((0.22, 0.40, 0.85), (0.25, 0.62, 0.40), (0.07, 0.07, 0.09))  # transmitted: blue, green, black
AGGREGATE_MM2 = 0.32  # lymphoid aggregate disc area (the part on tissue is > 0.25 mm^2 on full-size slides)
PALE_RADIUS_UM = 180.0  # pale loose tissue region
BLUR_RADIUS_UM = 220.0  # out-of-focus region
BLUR_SIGMA_PX = 6.0  # level-0 px: 3 um, plainly out of focus at 20x (a few um of defocus)


RENDER_DOWNSAMPLE = 2  # stain fields are rendered at half resolution, then resized to level 0
GRAIN_TILE = 509  # per-pixel noise repeats every this many px (not a divisor of any patch size)


def _grain(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel noise in [-0.5, 0.5) covering ``shape``, from a repeated prime-sized tile."""
    tile = rng.random((GRAIN_TILE, GRAIN_TILE), dtype=np.float32) - np.float32(0.5)
    reps = (-(-shape[0] // GRAIN_TILE), -(-shape[1] // GRAIN_TILE))
    return np.tile(tile, reps)[: shape[0], : shape[1]]


def render_slide(recipe: SlideRecipe) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The level-0 RGB image and the coarse truth masks of one slide.

    Scalar fields (tissue, tumour, nuclei of three kinds, texture, grain) are made at half
    resolution and combined into one weight per colour; each channel is a weighted sum of the
    colours. The 8-bit result is resized to level 0, where pen ink and debris are drawn.
    The steps below draw from one generator in a fixed order: reordering them changes every slide.
    """
    import cv2

    rng = np.random.default_rng(np.random.SeedSequence(list(recipe.seed_words)))
    h, w = recipe.height, recipe.width
    mh, mw = -(-h // MASK_DOWNSAMPLE), -(-w // MASK_DOWNSAMPLE)
    fields = _tissue_fields(rng, mh, mw, recipe.tumour_fraction)
    pens = [_draw_pen(rng, (h, w), fields["centres"]), _draw_pen(rng, (h, w), fields["centres"]),
            _draw_stroke(rng, (h, w), fields["centres"])]  # fmt: skip
    debris = _draw_debris(rng, (h, w))
    regions = _regions(rng, fields, pens)
    half, grain = _stain(rng, fields, regions, (-(-h // RENDER_DOWNSAMPLE), -(-w // RENDER_DOWNSAMPLE)))
    rgb = cv2.resize(half, (w, h), interpolation=cv2.INTER_LINEAR)
    pen = _apply_ink(rgb, pens, debris, grain)
    _defocus(rgb, regions["blur"], MASK_DOWNSAMPLE)
    return rgb, _truth_masks(fields, regions, pen, debris, (mw, mh))


def _regions(rng: np.random.Generator, fields: dict[str, np.ndarray], pens: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Coarse signed fields of the aggregate, pale and blurred regions: on tissue, away from the ink
    and from each other."""
    import cv2

    mh, mw = fields["pieces"].shape
    inked = np.zeros((mh, mw), bool)
    for one in pens:
        inked |= cv2.resize(one, (mw, mh), interpolation=cv2.INTER_AREA) > 0
    on_tissue = (fields["pieces"] > 0) & ~cv2.dilate(inked.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    mask_um = MPP * MASK_DOWNSAMPLE
    agg_r = float(np.sqrt(AGGREGATE_MM2 / np.pi) * 1000 / mask_um)
    centre = _pick_spot(rng, on_tissue, agg_r)
    aggregate_f = _disc((mh, mw), centre, agg_r, rng)
    free = on_tissue & (aggregate_f < -0.6)
    pale_r, blur_r = PALE_RADIUS_UM / mask_um, BLUR_RADIUS_UM / mask_um
    pale_f = _disc((mh, mw), _pick_spot(rng, free, pale_r), pale_r, rng)
    free &= pale_f < -0.6
    blur_f = _disc((mh, mw), _pick_spot(rng, free, 0.6 * blur_r), blur_r, rng)
    return {"aggregate": aggregate_f, "pale": pale_f, "blur": blur_f}


def _stain(rng: np.random.Generator, fields: dict[str, np.ndarray], regions: dict[str, np.ndarray],
           shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The stained tissue at render resolution (8-bit RGB), and the grain it used (debris reuses it)."""
    import cv2

    up = MASK_DOWNSAMPLE / RENDER_DOWNSAMPLE
    tissue_a = _soft_mask(fields["pieces"], shape, up, edge_px=1.5)
    tissue_a *= 1.0 - _soft_mask(fields["holes"], shape, up, edge_px=1.5)
    tumour_a = _soft_mask(fields["nests"], shape, up, edge_px=6.0)
    tumour_a *= tissue_a
    agg_a = _soft_mask(regions["aggregate"], shape, up, edge_px=4.0)
    agg_a *= tissue_a
    pale_a = _soft_mask(regions["pale"], shape, up, edge_px=6.0)
    pale_a *= tissue_a
    low = _smooth_noise(rng, shape, 300.0)
    # fibres: streaks along one axis, from noise blurred anisotropically
    along_x = bool(rng.integers(2))
    fib = rng.standard_normal(shape, dtype=np.float32)
    fib = cv2.GaussianBlur(fib, (0, 0), sigmaX=5 if along_x else 0.7, sigmaY=0.7 if along_x else 5)
    fib *= 1.0 / (float(fib[::7, ::7].std()) + 1e-6)
    uniform = rng.random(shape, dtype=np.float32)
    nuclei = _nuclei_fields(rng, uniform, tissue_a, tumour_a, agg_a, along_x)
    weights, additive = _colour_weights(uniform, nuclei, tissue_a, tumour_a, pale_a, low, fib)
    del fib, low
    grain = _grain(rng, shape)
    grain *= 7.0
    colours = np.array([GLASS, EOSIN, TUMOUR_CYTOPLASM, STROMA_NUCLEUS, LYMPHOCYTE, TUMOUR_NUCLEUS], np.float32)
    channels = []
    for ch in range(3):
        acc = additive + grain
        for weight, colour in zip(weights, colours[:, ch]):
            cv2.scaleAdd(weight, float(colour), acc, dst=acc)
        channels.append(acc)
    return cv2.convertScaleAbs(cv2.merge(channels)), grain


def _nuclei_fields(rng: np.random.Generator, uniform: np.ndarray, tissue_a: np.ndarray, tumour_a: np.ndarray,
                   agg_a: np.ndarray, along_x: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stroma, lymphocyte, tumour) nuclei: one uniform field, disjoint probability bands per kind,
    impulses of random amplitude."""
    r = RENDER_DOWNSAMPLE
    amplitude = rng.random(uniform.shape, dtype=np.float32)
    amplitude *= 0.5
    amplitude += 0.75
    stroma_only = tissue_a - tumour_a
    area = float(r * r)  # level-0 px per rendered px
    p1 = stroma_only * (area / 1500)
    p2 = p1 + tissue_a * (area / 6000) + agg_a * (area / 40)  # the aggregate: packed lymphocytes
    p3 = p2 + tumour_a * (area / 260)
    stroma_pts = np.where(uniform < p1, amplitude, 0).astype(np.float32)
    lymph_pts = np.where((uniform >= p1) & (uniform < p2), amplitude, 0).astype(np.float32)
    tumour_pts = np.where((uniform >= p2) & (uniform < p3), amplitude, 0).astype(np.float32)
    stroma_n = _nuclei(stroma_pts, (4.0 / r, 1.6 / r) if along_x else (1.6 / r, 4.0 / r), 0.35)
    lymph_n = _nuclei(lymph_pts, (3.0 / r, 3.0 / r), 0.3)
    tumour_n = _nuclei(tumour_pts, (5.2 / r, 4.6 / r), 0.45)
    return stroma_n, lymph_n, tumour_n


def _colour_weights(uniform: np.ndarray, nuclei: tuple[np.ndarray, np.ndarray, np.ndarray], tissue_a: np.ndarray,
                    tumour_a: np.ndarray, pale_a: np.ndarray, low: np.ndarray, fib: np.ndarray):
    """One weight per colour (glass, eosin, tumour cytoplasm, stroma nuclei, lymphocytes, tumour nuclei)
    and the glass's additive noise. ``uniform`` is reused in place as chromatin (saves a field)."""
    stroma_n, lymph_n, tumour_n = nuclei
    stroma_only = tissue_a - tumour_a
    chromatin = uniform  # uniform noise in [0.85, 1.2) darkens nuclei unevenly
    chromatin *= 0.35
    chromatin += 0.85
    # sequential "over" compositing written as weights: tumour nuclei over lymphocytes over
    # stroma nuclei over cytoplasm (eosin or tumour), all of it over glass
    free_n = (1 - tumour_n) * (1 - lymph_n)
    w_tumour_n = tissue_a * tumour_n * chromatin
    w_lymph = tissue_a * lymph_n * (1 - tumour_n) * chromatin
    w_stroma_n = tissue_a * stroma_n * free_n * chromatin
    cyto = (1 - stroma_n) * free_n
    w_tumour_cyto = cyto * tumour_a * (0.97 + 0.03 * low)
    w_eosin = cyto * stroma_only * (0.96 + 0.03 * low + 0.035 * fib)
    w_eosin *= 1.0 - 0.5 * pale_a  # pale loose tissue: half the eosin, the rest is glass showing through
    w_glass = 1 - tissue_a + cyto * stroma_only * 0.5 * pale_a
    additive = w_glass * 2.0 * low
    return (w_glass, w_eosin, w_tumour_cyto, w_stroma_n, w_lymph, w_tumour_n), additive


def _apply_ink(rgb: np.ndarray, pens: list[np.ndarray], debris: np.ndarray, grain: np.ndarray) -> np.ndarray:
    """Pen ink absorbs (multiplies), debris covers; both only where drawn. Returns the pens' union."""
    for one, ink in zip(pens, PEN_INKS):
        ys, xs = np.nonzero(one)
        alpha = (one[ys, xs].astype(np.float32) / 255 * 0.85)[:, None]
        rgb[ys, xs] = np.clip(rgb[ys, xs] * (1 - alpha * (1 - np.array(ink, np.float32))), 0, 255).astype(np.uint8)
    r = RENDER_DOWNSAMPLE
    ys, xs = np.nonzero(debris)
    alpha = (debris[ys, xs].astype(np.float32) / 255)[:, None]
    dark = np.array(DEBRIS, np.float32) * (1 + 0.04 * grain[ys // r, xs // r])[:, None]
    rgb[ys, xs] = np.clip(rgb[ys, xs] * (1 - alpha) + dark * alpha, 0, 255).astype(np.uint8)
    return np.maximum.reduce(pens)


def _truth_masks(fields: dict[str, np.ndarray], regions: dict[str, np.ndarray], pen: np.ndarray, debris: np.ndarray,
                 shrink: tuple[int, int]) -> dict[str, np.ndarray]:
    import cv2

    tissue = (fields["pieces"] > 0) & (fields["holes"] <= 0)
    return {
        "tissue": tissue,
        "holes": (fields["pieces"] > 0) & (fields["holes"] > 0),
        "tumour": tissue & (fields["nests"] > 0),
        "pen": cv2.resize(pen, shrink, interpolation=cv2.INTER_AREA) > 127,
        "debris": cv2.resize(debris, shrink, interpolation=cv2.INTER_AREA) > 127,
        "aggregate": tissue & (regions["aggregate"] > 0),
        "pale": tissue & (regions["pale"] > 0),
        "blur": regions["blur"] > 0,
    }


def _defocus(rgb: np.ndarray, field: np.ndarray, factor: int) -> None:
    """Blur ``rgb`` in place where the coarse signed ``field`` is > 0 (soft edge): an out-of-focus region."""
    import cv2

    ys, xs = np.nonzero(field > -0.2)
    if len(ys) == 0:
        return
    fy0, fy1, fx0, fx1 = max(0, ys.min() - 1), ys.max() + 2, max(0, xs.min() - 1), xs.max() + 2
    weight = cv2.resize(field[fy0:fy1, fx0:fx1], ((fx1 - fx0) * factor, (fy1 - fy0) * factor), interpolation=cv2.INTER_LINEAR)
    y0, x0 = fy0 * factor, fx0 * factor
    y1, x1 = min(rgb.shape[0], y0 + weight.shape[0]), min(rgb.shape[1], x0 + weight.shape[1])
    weight = np.clip(weight[: y1 - y0, : x1 - x0] * 8.0 + 0.5, 0.0, 1.0)[..., None]
    part = rgb[y0:y1, x0:x1]
    blurred = cv2.GaussianBlur(part, (0, 0), BLUR_SIGMA_PX)
    rgb[y0:y1, x0:x1] = (part * (1 - weight) + blurred * weight).astype(np.uint8)


def slide_recipes(slides: pd.DataFrame, patient: pd.DataFrame, seed: int) -> list[SlideRecipe]:
    risk = dict(zip(patient["case_id"], patient["risk"]))
    recipes = []
    for row_index, (slide_id, case_id) in enumerate(zip(slides["slide_id"], slides["case_id"])):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 4, row_index]))
        fraction = float(_sigmoid(-0.3 + 1.4 * risk[case_id] + 0.4 * rng.standard_normal()))
        recipes.append(
            SlideRecipe(
                slide_id=slide_id,
                width=int(rng.integers(4096, 5121)),
                height=int(rng.integers(3072, 3841)),
                tumour_fraction=float(np.clip(fraction, 0.03, 0.9)),
                seed_words=(seed, 5, row_index),
            )
        )
    return recipes


def write_slide(recipe: SlideRecipe, slide_path: Path, truth_path: Path) -> float:
    """Render and write one slide and its truth masks; return the tumour share of its tissue."""
    from ghanet_pipeline.slides.synthetic import write_aperio_svs_from_array

    rgb, truth = render_slide(recipe)
    with store.atomic_path(slide_path) as tmp:
        write_aperio_svs_from_array(tmp, rgb, mpp=MPP, app_mag=APP_MAG, levels=3, downsample=4, quality=85)
    with store.atomic_path(truth_path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                **{k: v.astype(np.uint8) for k, v in truth.items()},
                downsample=np.int64(MASK_DOWNSAMPLE),
                mpp=np.float64(MPP * MASK_DOWNSAMPLE),
                level0_size=np.array([recipe.width, recipe.height], np.int64),
            )
    tissue = truth["tissue"].sum()
    return float(truth["tumour"].sum() / tissue) if tissue else 0.0


# ----------------------------------------------------------------------------- the cohort


def _write_csv(path: Path, table: pd.DataFrame, **kwargs) -> None:
    buffer = io.StringIO()
    table.to_csv(buffer, lineterminator="\n", **kwargs)
    store.write_text(path, buffer.getvalue())


def write_slides(out_dir: str | Path, patients: int, seed: int, threads: int = 1) -> dict[str, float]:
    """Render and write every planned slide and its truth masks; return each slide's tumour share."""
    import cv2
    from tqdm import tqdm

    out = Path(out_dir)
    slides = plan(patients, seed, out)
    recipes = slide_recipes(slides, patient_table(patients, seed), seed)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)

    def one(recipe: SlideRecipe) -> float:
        return write_slide(recipe, out / "slides" / f"{recipe.slide_id}.svs", out / "truth" / f"{recipe.slide_id}.npz")

    started = time.perf_counter()
    previous_cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1 if threads > 1 else previous_cv_threads)
    try:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            shares = list(tqdm(pool.map(one, recipes), total=len(recipes), desc="demo slides", unit="slide"))
    finally:
        cv2.setNumThreads(previous_cv_threads)
    log.info("wrote %d slides in %.1f s", len(recipes), time.perf_counter() - started)
    return dict(zip(slides["slide_id"], shares))


def write_tables(out_dir: str | Path, patients: int, seed: int, folds: int, shares: dict[str, float]) -> None:
    """truth/patients.csv, cohort.csv, signatures.csv, splits/ and, last, samples.csv."""
    out = Path(out_dir)
    slides = plan(patients, seed, out)
    patient = patient_table(patients, seed)
    truth_patients = patient[["case_id", "risk", "survival_months", "censorship"]].copy()
    truth_patients["n_slides"] = slides.groupby("case_id").size().reindex(patient["case_id"]).to_numpy()
    slide_share = pd.Series([shares[s] for s in slides["slide_id"]], index=slides["case_id"])
    truth_patients["tumour_share"] = slide_share.groupby(level=0).mean().reindex(patient["case_id"]).to_numpy()
    _write_csv(out / "truth" / "patients.csv", truth_patients.round(6), index=False)

    _write_csv(out / "cohort.csv", cohort_table(slides, patient, seed), index=False)
    _write_csv(out / "signatures.csv", signatures_table(), index=False)
    with store.atomic_path(out / "splits") as tmp:
        tmp.mkdir()
        for k, (train, val) in enumerate(stratified_splits(patient, folds, seed)):
            (tmp / f"splits_{k}.csv").write_text(split_csv(Fold(tuple(train), tuple(val))))
    sheet = slides.assign(path=[f"slides/{s}.svs" for s in slides["slide_id"]], mpp="")
    _write_csv(out / "samples.csv", sheet, index=False)  # last: its presence means the cohort is complete


def generate(out_dir: str | Path, patients: int, seed: int, folds: int = 5, threads: int = 1) -> pd.DataFrame:
    """Write the whole demo cohort to ``out_dir``; return the planned slides (see :func:`plan`)."""
    if not 2 <= folds <= patients:
        raise ValueError(f"--folds must be between 2 and --patients ({patients}), got {folds}")
    shares = write_slides(out_dir, patients, seed, threads)
    write_tables(out_dir, patients, seed, folds, shares)
    return plan(patients, seed, out_dir)
