"""Tissue stage speed and quality: ours vs the bare read of the segmentation level (the floor)
vs a straightforward CLAM-like segmenter (one cv2.pointPolygonTest per patch and contour),
and the cost of the per-patch blur scores (dask, block-wise) with one thread and with two.

    python benchmarks/tissue.py [--cache /tmp/ghanet-bench] [--repeats 3] [--no-giga]

"ours" is segmentation + grid (tissue.quality_mpp off); "seg" is our segmentation alone
(read + segment, no grid), the figure to hold against the floor; "blur1"/"blur2" are the blur
scores of ours' patches with 1 and 2 dask threads. Coverage: the share of reference tissue
covered by at least one patch (the demo's truth; for the real slides a reference mask made
at 2 um/px: mean optical density above 0.05, opened by 1 px, pieces and holes under 300 um^2
removed; checked by eye). Junk: patches more than 25 % pen or more than half glass.

Slides: the real ones of ../shared/data/slides (when present), a demo-generator slide and a
gigapixel synthetic slide (60000 x 45000 px at 0.25 um/px, written tile by tile with
``synthetic.write_aperio_svs``; cached, about 3 minutes to write the first time) that has tissue,
holes, a 0.8 mm wide blue pen stroke over glass and tissue, and dark debris. Every measurement
runs in a fresh process, so peak memory (max RSS) is that method's own; the time is that of the
best of ``--repeats`` runs (warm page cache) and excludes the Python imports. Memory: peak
RSS of the process ("peak MB") and how far the method raised it above the peak after the
imports ("+MB"). The pen share is
the fraction of kept patches whose centre lies on the pen stroke (ground truth known).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIGA = dict(width=60_000, height=45_000, mpp=0.25)
COARSE = 32  # level-0 px per px of the giga slide's truth maps (8 um/px)


# ----------------------------------------------------------------------------- the gigapixel slide


def _giga_truth(seed: int = 0) -> dict[str, np.ndarray]:
    """Soft truth maps (float32 0..1) at 8 um/px: tissue (holes carved), pen, debris."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = math.ceil(GIGA["height"] / COARSE), math.ceil(GIGA["width"] / COARSE)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.full((h, w), -10, np.float32)
    for cx, cy, a, b, t in [(0.28, 0.5, 0.2, 0.33, 0.3), (0.68, 0.45, 0.22, 0.3, -0.4), (0.5, 0.85, 0.12, 0.08, 0.1)]:
        c, s = np.cos(t), np.sin(t)
        u = ((xx - cx * w) * c + (yy - cy * h) * s) / (a * w)
        v = (-(xx - cx * w) * s + (yy - cy * h) * c) / (b * h)
        field = np.maximum(field, 1 - u * u - v * v)
    noise = cv2.resize(rng.standard_normal((h // 40 + 2, w // 40 + 2)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    tissue = (field + 0.25 * noise > 0).astype(np.uint8)
    for _ in range(12):  # holes, 150-400 um
        ys, xs = np.nonzero(cv2.erode(tissue, np.ones((61, 61), np.uint8)))
        i = rng.integers(len(ys))
        cv2.circle(tissue, (int(xs[i]), int(ys[i])), int(rng.uniform(10, 25)), 0, -1)
    pen = np.zeros((h, w), np.uint8)  # an arc 0.8 mm wide over the first piece and the glass
    angles = np.linspace(-0.6, 2.2, 80)
    pts = np.stack([0.28 * w + 0.27 * w * np.cos(angles), 0.5 * h + 0.36 * h * np.sin(angles)], 1)
    cv2.polylines(pen, [pts.astype(np.int32)], False, 1, 100)
    debris = np.zeros((h, w), np.uint8)
    for _ in range(40):
        cv2.ellipse(debris, (int(rng.uniform(0, w)), int(rng.uniform(0, h))),
                    (int(rng.uniform(3, 12)), int(rng.uniform(2, 8))), float(rng.uniform(0, 180)), 0, 360, 1, -1)  # fmt: skip
    return {"tissue": tissue.astype(np.float32), "pen": pen.astype(np.float32), "debris": debris.astype(np.float32)}


def _texture(seed: int = 1) -> np.ndarray:
    """A 512 px H&E-like texture: pink stroma with fibres and purple nuclei (float32 RGB)."""
    import cv2

    rng = np.random.default_rng(seed)
    fib = cv2.GaussianBlur(rng.standard_normal((512, 512)).astype(np.float32), (0, 0), sigmaX=6, sigmaY=0.8)
    fib /= fib.std()
    tex = np.array([234, 156, 196], np.float32) * (0.96 + 0.04 * fib[..., None])
    nuclei = np.zeros((512, 512), np.float32)
    for _ in range(220):
        cv2.ellipse(nuclei, (int(rng.uniform(0, 512)), int(rng.uniform(0, 512))), (int(rng.uniform(4, 9)), int(rng.uniform(3, 6))),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)  # fmt: skip
    nuclei = cv2.GaussianBlur(nuclei, (0, 0), 1.0)[..., None]
    return tex * (1 - nuclei) + np.array([90, 50, 140], np.float32) * nuclei


def write_giga(path: Path) -> None:
    import cv2

    from ghanet_pipeline.io import store
    from ghanet_pipeline.slides import synthetic

    truth = _giga_truth()
    maps = np.ascontiguousarray(np.stack([truth["tissue"], truth["pen"], truth["debris"]], -1))
    maps = cv2.GaussianBlur(maps, (0, 0), 0.7)
    tex = _texture()
    glass = np.array([244, 243, 241], np.float32)
    ink = np.array([0.22, 0.40, 0.85], np.float32)
    dark = np.array([48, 40, 36], np.float32)

    def tile_fn(x0: int, y0: int, w: int, h: int) -> np.ndarray:
        u = ((x0 + np.arange(w, dtype=np.float32) + 0.5) / COARSE - 0.5)[None, :]
        v = ((y0 + np.arange(h, dtype=np.float32) + 0.5) / COARSE - 0.5)[:, None]
        mx, my = np.broadcast_to(u, (h, w)).copy(), np.broadcast_to(v, (h, w)).copy()
        t, p, d = np.moveaxis(cv2.remap(maps, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), -1, 0)
        ox, oy = x0 % 256, y0 % 256
        img = glass * (1 - t[..., None]) + tex[oy : oy + h, ox : ox + w] * t[..., None]
        img *= 1 - 0.85 * p[..., None] * (1 - ink)
        img = img * (1 - d[..., None]) + dark * d[..., None]
        return np.clip(img, 0, 255).astype(np.uint8)

    started = time.perf_counter()
    with store.atomic_path(path) as tmp:
        synthetic.write_aperio_svs(tmp, GIGA["width"], GIGA["height"], tile_fn, mpp=GIGA["mpp"], app_mag=40,
                                   levels=3, downsample=4, quality=80, maxworkers=2)  # fmt: skip
    np.savez_compressed(path.with_suffix(".npz"), pen=truth["pen"] > 0.5, debris=truth["debris"] > 0.5,
                        tissue=truth["tissue"] > 0.5, downsample=np.int64(COARSE))  # fmt: skip
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def write_demo(path: Path) -> None:
    from ghanet_pipeline.demo import cohort as demo

    recipe = demo.SlideRecipe(slide_id="demo", width=4800, height=3600, tumour_fraction=0.3, seed_words=(3, 5, 0))
    demo.write_slide(recipe, path, path.with_suffix(".npz"))


# ----------------------------------------------------------------------------- the methods


def run_ours(path: str, mpp: float | None) -> dict:
    from ghanet_pipeline.config import stage_settings
    from ghanet_pipeline.slides import tissue

    settings = stage_settings("tissue", None, json.dumps({"quality_mpp": None}))
    t0 = time.perf_counter()
    result = tissue.process("bench", path, settings, sheet_mpp=mpp, qc_image=False)
    seconds = time.perf_counter() - t0
    assert result.status == "ok", result.reason
    return {"seconds": seconds, "coords": result.grid.coords.tolist(), "patch0": result.level.patch_size_level0,
            "detail": {k: round(v, 3) for k, v in result.timings.items()}}  # fmt: skip


def run_floor(path: str, mpp: float | None) -> dict:
    """Only read the level our segmentation reads, in the same strips, without resizing."""
    from ghanet_pipeline.config import stage_settings
    from ghanet_pipeline.slides import regions, segmentation
    from ghanet_pipeline.slides import slide as sl

    settings = stage_settings("tissue", None, None)
    t0 = time.perf_counter()
    s = sl.open_slide(path)
    value = sl.resolve_mpp(s.properties, path, mpp).value
    level, _, _ = segmentation.segmentation_plan(s, value, settings.seg_mpp, settings.mpp_tolerance)
    image = regions.read_level_resized(s, path, level, s.level_dimensions[level])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "level": level, "shape": list(image.shape)}


def run_clam_like(path: str, mpp: float | None) -> dict:
    """Segment at the level nearest 64x, then test every candidate patch against every contour
    with cv2.pointPolygonTest, one patch at a time (CLAM's create_patches_fp.py, 'four_pt')."""
    import cv2

    from ghanet_pipeline.config import stage_settings
    from ghanet_pipeline.slides import slide as sl

    settings = stage_settings("tissue", None, None)
    t0 = time.perf_counter()
    s = sl.open_slide(path)
    value = sl.resolve_mpp(s.properties, path, mpp).value
    patch0 = sl.choose_level(s.level_downsamples, value, settings.target_mpp, settings.patch_size, settings.mpp_tolerance).patch_size_level0
    level = s.get_best_level_for_downsample(64)
    ds = s.level_downsamples[level]
    img = np.asarray(s.read_region((0, 0), level, s.level_dimensions[level]).convert("RGB"))
    sat = cv2.medianBlur(cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1], 7)
    _, mask = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((4, 4), np.uint8))
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    hierarchy = hierarchy[0] if hierarchy is not None else np.zeros((0, 4), int)
    min_area = settings.min_tissue_area_um2 / (value * ds) ** 2
    min_hole = settings.min_hole_area_um2 / (value * ds) ** 2
    tissue, holes = [], []
    for i, c in enumerate(contours):
        if hierarchy[i][3] == -1:
            kids = [contours[k] for k in range(len(contours)) if hierarchy[k][3] == i and cv2.contourArea(contours[k]) >= min_hole]
            if cv2.contourArea(c) - sum(cv2.contourArea(k) for k in kids) >= min_area:
                tissue.append((c * ds).astype(np.int32))
                holes.append([(k * ds).astype(np.int32) for k in kids])
    width, height = s.dimensions
    coords = []
    shift = patch0 // 4
    for cont, cont_holes in zip(tissue, holes):
        x, y, w, h = cv2.boundingRect(cont)
        for py in range(y, min(y + h, height - patch0 + 1), patch0):
            for px in range(x, min(x + w, width - patch0 + 1), patch0):
                cx, cy = px + patch0 // 2, py + patch0 // 2
                points = [(cx - shift, cy - shift), (cx + shift, cy + shift), (cx + shift, cy - shift), (cx - shift, cy + shift)]
                if not any(cv2.pointPolygonTest(cont, (float(a), float(b)), False) >= 0 for a, b in points):
                    continue
                if any(cv2.pointPolygonTest(hole, (float(cx), float(cy)), False) > 0 for hole in cont_holes):
                    continue
                coords.append((px, py))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "coords": coords, "patch0": patch0, "level": level}


def run_seg(path: str, mpp: float | None) -> dict:
    """Our segmentation alone: read the level, segment (no grid, no QC)."""
    from ghanet_pipeline.config import stage_settings
    from ghanet_pipeline.slides import segmentation
    from ghanet_pipeline.slides import slide as sl

    settings = stage_settings("tissue", None, None)
    t0 = time.perf_counter()
    s = sl.open_slide(path)
    value = sl.resolve_mpp(s.properties, path, mpp).value
    segmentation.segment_slide(s, path, value, settings)
    return {"seconds": time.perf_counter() - t0}


def _run_blur(path: str, mpp: float | None, threads: int) -> dict:
    """Blur scores of ours' patches (the grid is computed before the clock starts)."""
    from ghanet_pipeline.config import stage_settings
    from ghanet_pipeline.slides import patch_quality, tissue
    from ghanet_pipeline.slides import slide as sl

    settings = stage_settings("tissue", None, json.dumps({"quality_mpp": None}))
    result = tissue.process("bench", path, settings, sheet_mpp=mpp, qc_image=False)
    quality = stage_settings("tissue", None, None).quality_mpp
    t0 = time.perf_counter()
    s = sl.open_slide(path)
    scores, plan = patch_quality.blur_scores(
        s, path, result.mpp.value, result.grid.coords, result.level.patch_size_level0, quality, settings.mpp_tolerance,
        threads=threads,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "level": plan.level, "patches": len(scores),
            "flagged": int((scores > patch_quality.REPORT_BLUR).sum())}  # fmt: skip


METHODS = {
    "ours": run_ours, "floor": run_floor, "seg": run_seg, "clam_like": run_clam_like,
    "blur1": lambda p, m: _run_blur(p, m, 1), "blur2": lambda p, m: _run_blur(p, m, 2),
}  # fmt: skip


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss may carry a parent's over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(method: str, path: str, mpp: float | None) -> None:
    # every method imports the same modules before its clock starts
    import cv2  # noqa: F401
    import dask.array  # noqa: F401
    import openslide  # noqa: F401
    import skimage.filters  # noqa: F401
    import skimage.measure  # noqa: F401
    import skimage.morphology  # noqa: F401

    from ghanet_pipeline.slides import patch_quality, slide, stain, tiling, tissue  # noqa: F401

    baseline = _peak_rss_mb()
    result = METHODS[method](path, mpp)
    peak = _peak_rss_mb()
    result["max_rss_mb"] = peak
    result["rss_above_imports_mb"] = peak - baseline
    print(json.dumps(result))


def measure(method: str, path: Path, mpp: float | None, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        cmd = [sys.executable, __file__, "--worker", method, str(path)] + (["--mpp", str(mpp)] if mpp else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    best["max_rss_mb"] = max(r["max_rss_mb"] for r in runs)
    best["rss_above_imports_mb"] = max(r["rss_above_imports_mb"] for r in runs)
    return best


def on_truth(coords: list, patch0: int, truth_path: Path) -> tuple[float, float] | None:
    if not truth_path.exists() or not coords:
        return None
    truth = np.load(truth_path)
    ds = int(truth["downsample"])
    xy = np.asarray(coords)
    cx = np.clip((xy[:, 0] + patch0 // 2) // ds, 0, truth["pen"].shape[1] - 1)
    cy = np.clip((xy[:, 1] + patch0 // 2) // ds, 0, truth["pen"].shape[0] - 1)
    return float(truth["pen"][cy, cx].astype(bool).mean()), float(truth["debris"][cy, cx].astype(bool).mean())


def reference_mask(path: Path, mpp: float | None, ref_mpp: float = 2.0) -> tuple[np.ndarray, np.ndarray, float]:
    """(tissue, pen, level-0 px per px) at ``ref_mpp`` for a slide without truth: mean optical
    density above 0.05 (glass is about 0.01), opened by 1 px, pieces and holes under 300 um^2
    removed; no pen on the real slides used here."""
    from skimage.morphology import (
        disk,
        opening,
        remove_small_holes,
        remove_small_objects,
    )

    from ghanet_pipeline.slides import regions, stain
    from ghanet_pipeline.slides import slide as sl

    s = sl.open_slide(path)
    value = sl.resolve_mpp(s.properties, path, mpp).value
    width, height = s.level_dimensions[0]
    ds = ref_mpp / value
    size = (int(round(width / ds)), int(round(height / ds)))
    rgb = regions.read_level_resized(s, str(path), s.get_best_level_for_downsample(ds), size)
    s.close()
    tissue = opening(stain.optical_density(rgb).mean(-1) > 0.05, disk(1))
    tissue = remove_small_holes(remove_small_objects(tissue, max_size=int(300 / ref_mpp**2)), max_size=int(300 / ref_mpp**2))
    return tissue, np.zeros_like(tissue), width / size[0]


def scores(coords: list, patch0: int, path: Path, mpp: float | None, cache: dict) -> tuple[float, float] | None:
    """(coverage, junk share) against the slide's truth (.npz next to it) or a reference mask."""
    from ghanet_pipeline.slides import tiling

    truth_path = path.with_suffix(".npz")
    if path not in cache:
        if truth_path.exists():
            truth = np.load(truth_path)
            tissue = truth["tissue"].astype(bool)
            cache[path] = (tissue, truth["pen"].astype(bool), float(truth["downsample"]), tissue & ~truth["pen"].astype(bool) & ~truth["debris"].astype(bool))
        elif "giga" in path.name:
            return None
        else:
            tissue, pen, ds = reference_mask(path, mpp)
            cache[path] = (tissue, pen, ds, tissue)
    tissue, pen, ds, good = cache[path]
    if not coords:
        return 0.0, 0.0
    covered = np.zeros(good.shape, bool)
    for x, y in coords:
        covered[int(y // ds) : int(-(-(y + patch0) // ds)), int(x // ds) : int(-(-(x + patch0) // ds))] = True
    xy = np.asarray(coords, np.float64)
    pen_i, glass_i = tiling.integral_image(pen.astype(np.uint8)), tiling.integral_image((~tissue).astype(np.uint8))
    pen_f = np.array([tiling.box_fractions(pen_i, np.array([x]), np.array([y]), patch0, ds)[0, 0] for x, y in xy])
    glass_f = np.array([tiling.box_fractions(glass_i, np.array([x]), np.array([y]), patch0, ds)[0, 0] for x, y in xy])
    return float((covered & good).sum() / max(1, good.sum())), float(((pen_f > 0.25) | (glass_f > 0.5)).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="/tmp/ghanet-bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-giga", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "PATH"))
    parser.add_argument("--mpp", type=float)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.mpp)
        return 0
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    slides: list[tuple[str, Path, float | None]] = []
    real = REPO.parent / "shared" / "data" / "slides"
    if real.is_dir():
        slides += [("CMU-1-Small-Region", real / "CMU-1-Small-Region.svs", None),
                   ("TCGA-CR-7395 (mpp 0.25)", real / "TCGA-CR-7395-01A-01-TS1.svs", 0.25)]  # fmt: skip
    demo_path = cache / "demo.svs"
    if not demo_path.exists():
        write_demo(demo_path)
    slides.append(("demo 4800x3600 @0.5", demo_path, None))
    if not args.no_giga:
        giga = cache / "giga_60000x45000.svs"
        if not giga.exists():
            write_giga(giga)
        slides.append(("giga 60000x45000 @0.25", giga, None))

    header = (f"{'slide':<26}{'method':<11}{'seconds':>9}{'x floor':>9}{'peak MB':>9}{'+MB':>7}"
              f"{'patches':>9}{'on pen':>8}{'on debris':>10}{'coverage':>10}{'junk':>7}")  # fmt: skip
    print(header)
    print("-" * len(header))
    cache: dict = {}
    for name, path, mpp in slides:
        results = {m: measure(m, path, mpp, args.repeats) for m in ("floor", "seg", "ours", "clam_like", "blur1", "blur2")}
        floor = results["floor"]["seconds"]
        for method, r in results.items():
            n = len(r["coords"]) if "coords" in r else r.get("patches", "")
            share = on_truth(r.get("coords", []), r.get("patch0", 0), path.with_suffix(".npz")) if "coords" in r else None
            pen = f"{100 * share[0]:.1f}%" if share else ""
            debris = f"{100 * share[1]:.1f}%" if share else ""
            cov = scores(r["coords"], r["patch0"], path, mpp, cache) if "coords" in r else None
            coverage = f"{100 * cov[0]:.1f}%" if cov else ""
            junk = f"{100 * cov[1]:.1f}%" if cov else ""
            print(f"{name:<26}{method:<11}{r['seconds']:>9.3f}{r['seconds'] / floor:>9.2f}{r['max_rss_mb']:>9.0f}{r['rss_above_imports_mb']:>7.0f}"
                  f"{n!s:>9}{pen:>8}{debris:>10}{coverage:>10}{junk:>7}")  # fmt: skip
        ours, clam, seg = results["ours"]["seconds"], results["clam_like"]["seconds"], results["seg"]["seconds"]
        print(f"{'':<26}seg/floor = {seg / floor:.2f} (target <= 1.5), clam_like/ours = {clam / ours:.1f}x; "
              f"blur flagged {results['blur1'].get('flagged')}; ours: {results['ours']['detail']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
