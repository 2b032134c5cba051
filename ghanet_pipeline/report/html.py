"""The cohort report's HTML: one self-contained ``report/index.html`` of whatever the run produced.

Every section says plainly when its inputs are absent; what it shows comes from
:mod:`ghanet_pipeline.report.readers` (nothing is recomputed except Kaplan-Meier curves). Images
are embedded as base64 data URIs; every string that came from a user (ids, reasons, paths,
config values) is escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from ghanet_pipeline import __version__
from ghanet_pipeline.config import ReportSettings
from ghanet_pipeline.io.layout import Layout
from ghanet_pipeline.io.safe_text import html as esc
from ghanet_pipeline.report.readers import (
    first_feature_attrs,
    fold_dirs,
    heatmap_pictures,
    held_out_groups,
    qc_pictures,
    read_benchmarks,
    read_curves,
    read_feature_status,
    read_genomics_summary,
    read_model_results,
    read_predictions,
    read_slide_status,
    run_model_dirs,
    run_slide_ids,
    slide_cases,
)

log = logging.getLogger(__name__)

THUMB_MAX_SIDE = 480
HEATMAP_MAX_SIDE = 1400


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    body: str


# ----------------------------------------------------------------------------- small html helpers

def table(frame: pd.DataFrame, classes: str = "", max_rows: int | None = None) -> str:
    """An escaped HTML table of ``frame``; numbers formatted, NaN shown as an empty cell."""
    shown = frame if max_rows is None else frame.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    rows = []
    for _, row in shown.iterrows():
        cells = "".join(f"<td>{esc(_fmt(v))}</td>" for v in row)
        rows.append(f"<tr>{cells}</tr>")
    more = ""
    if max_rows is not None and len(frame) > max_rows:
        more = f'<p class="note">showing {max_rows} of {len(frame)} rows.</p>'
    return f'<table class="{esc(classes)}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{more}'

def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            return ""
        return f"{float(value):.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)

def absent(text: str) -> str:
    return f'<p class="absent">{esc(text)}</p>'

def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'

def data_uri_png(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

def image_data_uri(path: Path, max_side: int, photo: bool = False) -> str:
    """An image file as a data URI, shrunk so its longer side is at most ``max_side`` px.

    ``photo=True`` embeds JPEG (slide pictures: about ten times smaller than PNG); else PNG.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if max(img.size) > max_side:
            scale = max_side / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
        buf = io.BytesIO()
        if photo:
            img.convert("RGB").save(buf, format="JPEG", quality=85)
            return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        if img.mode not in ("RGB", "RGBA", "L"):
            img = img.convert("RGBA")
        img.save(buf, format="PNG", optimize=True)
    return data_uri_png(buf.getvalue())

def figure(uri: str, caption: str, css: str = "") -> str:
    return f'<figure class="{esc(css)}"><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'

# ----------------------------------------------------------------------------- sections

def section_overview(out: Path, run_config: dict | None) -> Section:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [("output folder", str(out.resolve())), ("report written", now), ("ghanet-pipeline", __version__)]
    if run_config:
        demo = run_config.get("demo") or {}
        for key in ("samples", "cohort_table", "signatures", "splits_dir", "strict"):
            if key in run_config:
                value = run_config[key]
                if value is None:
                    value = "from the demo cohort" if demo.get("enabled") and key != "strict" else "not set"
                rows.append((key, str(value)))
        if demo.get("enabled"):
            rows.append(("demo cohort", f"{demo.get('patients')} synthetic patients, seed {demo.get('seed')}, "
                                        f"in {demo.get('dir')}"))
    else:
        rows.append(("run configuration", "not given (--run-config)"))
    body = table(pd.DataFrame(rows, columns=["item", "value"]), "kv")
    return Section("overview", "Run", body)

def _of_this_run(frame: pd.DataFrame, slides: set[str] | None) -> pd.DataFrame:
    """Rows of the run's own slides (all rows when the run's sheet is unknown)."""
    if slides is None or frame.empty or "slide_id" not in frame.columns:
        return frame
    return frame[frame["slide_id"].astype(str).isin(slides)].reset_index(drop=True)

def section_cohort(out: Path, run_config: dict | None = None) -> Section:
    slides = run_slide_ids(run_config)
    status = _of_this_run(read_slide_status(out), slides)
    if not status.empty and "case_id" not in status.columns:
        cases = slide_cases(out, run_config)
        if cases:
            status.insert(1, "case_id", status["slide_id"].astype(str).map(cases).fillna(""))
    if status.empty:
        return Section("cohort", "Cohort: slides", absent(
            "No slide status records (status/*.json or manifest.csv): no slides were processed in this run."))
    features = _of_this_run(read_feature_status(out), slides)
    frame = status.copy()
    if not features.empty:
        frame = frame.merge(features, on="slide_id", how="left")
    frame["status"] = frame.get("status", pd.Series(["?"] * len(frame))).fillna("?")
    if "features_status" in frame.columns:
        feat_failed = frame["features_status"].fillna("").isin(["failed", "unreadable"])
        both = frame["status"] == "ok"
        frame.loc[feat_failed & both, "reason"] = frame.loc[feat_failed & both, "features_reason"].map(
            lambda r: f"features: {r}")
        frame["overall"] = np.where((frame["status"] == "ok") & ~feat_failed, "ok", "failed")
    else:
        frame["overall"] = np.where(frame["status"] == "ok", "ok", "failed")
    n_ok = int((frame["overall"] == "ok").sum())
    n_failed = len(frame) - n_ok
    parts = [f'<p class="counts"><b>{len(frame)}</b> slides: <span class="ok">{n_ok} ok</span>, '
             f'<span class="failed">{n_failed} failed</span>.</p>']
    if "n_patches" in frame.columns:
        patches = pd.to_numeric(frame.loc[frame["overall"] == "ok", "n_patches"], errors="coerce").dropna()
        if len(patches):
            parts.append(note(f"Patches per usable slide: total {int(patches.sum())}, median {patches.median():.0f}, "
                              f"min {int(patches.min())}, max {int(patches.max())}."))
    failed = frame[frame["overall"] != "ok"]
    if len(failed):
        parts.append("<h3>Failed slides</h3>")
        cols = [c for c in ("slide_id", "case_id", "status", "features_status", "reason", "path") if c in failed.columns]
        parts.append(table(failed[cols].fillna(""), "failed-slides"))
    else:
        parts.append(note("No slide failed."))
    parts.append("<h3>All slides</h3>")
    if "n_blurred" in frame.columns:
        blurred = pd.to_numeric(frame["n_blurred"], errors="coerce").fillna(0)
        if blurred.sum():
            parts.append(note(f"{int(blurred.sum())} patches in {int((blurred > 0).sum())} slides are flagged as out of "
                              "focus (n_blurred; magenta crosses in the QC pictures). They are kept unless "
                              "tissue.max_blur is set."))
    cols = [c for c in ("slide_id", "case_id", "overall", "n_patches", "n_blurred", "mpp", "mpp_source",
                        "effective_mpp", "seconds", "reason") if c in frame.columns]
    parts.append(table(frame[cols], "slides", max_rows=500))
    return Section("cohort", "Cohort: slides", "".join(parts))

def section_qc(out: Path, settings: ReportSettings, run_config: dict | None = None) -> Section:
    slides = run_slide_ids(run_config)
    pngs = qc_pictures(out, slides)
    if not pngs:
        return Section("qc", "Tissue QC", absent("No QC thumbnails (qc/*.png) in this run."))
    shown = pngs[: settings.max_qc_thumbnails]
    figs = []
    for png in shown:
        try:
            figs.append(figure(image_data_uri(png, THUMB_MAX_SIDE, photo=True), png.stem, "thumb"))
        except Exception as err:  # noqa: BLE001
            figs.append(absent(f"{png.name}: cannot read ({err})"))
    text = note(f"Tissue outline and patch grid, {len(shown)} of {len(pngs)} slides "
                "(report.max_qc_thumbnails sets how many).") if len(pngs) > len(shown) else ""
    return Section("qc", "Tissue QC", text + f'<div class="gallery">{"".join(figs)}</div>')

def section_genomics(out: Path) -> Section:
    summary = read_genomics_summary(out)
    if summary is None:
        return Section("genomics", "Genomics", absent(
            "No genomics in this run (no cohort table configured, or the genomics stage did not run)."))
    parts = [note(f"{summary.get('n_patients', '?')} patients; convention {summary.get('convention', '?')}; "
                  f"survival bin edges (months): {_fmt(summary.get('bin_edges', []))}.")]
    groups = summary.get("groups") or {}
    if groups:
        parts.append(table(pd.DataFrame({"gene family": list(groups), "features": list(groups.values())}), "small"))
    folds = summary.get("folds") or []
    if folds:
        parts.append(table(pd.DataFrame([{"fold": i, **f} for i, f in enumerate(folds)]), "small"))
    problems = summary.get("problems") or []
    if problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in problems)
        parts.append(f"<h3>Problems found in the tables</h3><ul>{items}</ul>")
    return Section("genomics", "Genomics", "".join(parts))

def cv_tables(out: Path, run_config: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-model summary, per-fold results) as shown, from models/*/summary.json and fold*/result.json."""
    summaries, folds = [], []
    for results in read_model_results(out, run_config):
        model = results.model
        for fold, result in results.folds:
            if result is None:
                folds.append({"model": model, "fold": fold, "cindex_final": None, "note": "no result.json (not finished)"})
                continue
            excluded = result.excluded or ()
            folds.append({
                "model": model, "fold": fold,
                "cindex_final": result.cindex_final,
                "cindex_best (optimistic)": result.cindex_best,
                "best_epoch": result.best_epoch,
                "n_train": result.n_train, "n_val": result.n_val,
                "excluded": len(excluded) if isinstance(excluded, (list, tuple)) else excluded,
            })
        summary = results.summary
        if summary is not None:
            summaries.append({
                "model": model,
                "c-index final (mean ± std)": _pm(summary.cindex_final_mean, summary.cindex_final_std),
                "c-index best epoch, optimistic (mean ± std)": _pm(
                    summary.cindex_best_mean_optimistic, summary.cindex_best_std_optimistic),
                "folds": len(summary.cindex_final_per_fold or ()),
            })
    return pd.DataFrame(summaries), pd.DataFrame(folds)


def _pm(mean: Any, std: Any) -> str:
    try:
        return f"{float(mean):.3f} ± {float(std):.3f}"
    except (TypeError, ValueError):
        return "n/a"

# panel title -> [(column, label, line style)]: a panel is drawn when any of its columns has numbers
CURVE_PANELS: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    # val_loss is the survival NLL alone: compare it with the training NLL, not the total loss.
    ("loss", (("loss", "training loss (NLL + recon.)", "-"), ("val_loss", "validation NLL", "--"),
              ("nll", "training NLL", ":"))),
    ("c-index", (("val_cindex", "validation c-index", "-"), ("train_cindex", "training c-index", "--"))),
    ("learning rate", (("lr", "learning rate", "-"),)),
)

def _has_numbers(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(np.isfinite(frame[column].to_numpy(dtype=float)).any())

def plot_curves(curves: pd.DataFrame, title: str) -> bytes:
    """A PNG: per panel, each fold as a thin line and the mean over folds per epoch as a thick one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, [s for s in series if _has_numbers(curves, s[0])]) for name, series in CURVE_PANELS]
    panels = [(name, series) for name, series in panels if series]
    colours = ("#1f77b4", "#d62728", "#2ca02c")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=100, squeeze=False)
    try:
        for ax, (name, series) in zip(axes[0], panels):
            for colour, (column, label, style) in zip(colours, series):
                for _, fold in curves.groupby("fold"):
                    fold = fold.sort_values("epoch")
                    ax.plot(fold["epoch"], fold[column], style, color=colour, alpha=0.3, linewidth=0.9)
                # The mean at an epoch is over the folds that reached it (NaN cells skipped).
                mean = curves.groupby("epoch")[column].mean().dropna()
                # A series recorded at a few epochs only (train c-index: the last) needs markers to show.
                marker = "o" if len(mean) < 3 else None
                ax.plot(mean.index, mean.to_numpy(), style, color=colour, linewidth=2.2, marker=marker,
                        label=f"{label} (mean)")
            if name == "c-index":
                ax.axhline(0.5, color="#888", linewidth=0.8, linestyle=":")
            if name == "learning rate" and (curves["lr"] > 0).all():
                ax.set_yscale("log")
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()

def learning_curves(out: Path, run_config: dict | None = None) -> str:
    """HTML of each model's learning curves (the training loop's per-epoch metrics.csv)."""
    model_dirs = run_model_dirs(out, run_config)
    parts = []
    for model_dir in model_dirs:
        curves, notes = read_curves(model_dir)
        parts.append(f"<h4>{esc(model_dir.name)}</h4>")
        try:
            if curves.empty or not any(_has_numbers(curves, s[0]) for _, series in CURVE_PANELS for s in series):
                parts.append(absent(f"No per-epoch metrics for {model_dir.name}."))
            else:
                n_folds = curves["fold"].nunique()
                caption = f"{model_dir.name}: {n_folds} fold(s), thin lines per fold, thick lines the mean over folds"
                parts.append(figure(data_uri_png(plot_curves(curves, model_dir.name)), caption, "wide"))
                missing = [c for c in ("loss", "val_loss", "val_cindex") if not _has_numbers(curves, c)]
                if missing:
                    notes.append(f"not recorded in this run: {', '.join(missing)}")
        except Exception as err:  # noqa: BLE001 - the curves must not take the table down with them
            log.exception("learning curves of %s", model_dir.name)
            parts.append(absent(f"Learning curves of {model_dir.name} could not be drawn: {type(err).__name__}: {err}"))
        parts.extend(note(n) for n in notes)
    if not parts:
        return ""
    return "<h3>Learning curves</h3>" + note(
        "Per epoch, from each fold's metrics.csv: training loss (survival NLL plus the reconstruction term) and its "
        "NLL part, validation NLL and c-index on the held-out fold, learning rate."
    ) + "".join(parts)

def section_cv(out: Path, run_config: dict | None = None) -> Section:
    summaries, folds = cv_tables(out, run_config)
    if summaries.empty and folds.empty:
        return Section("cv", "Cross-validation", absent("No models trained in this run (models/ is empty or absent)."))
    parts = [note("Harrell's c-index on each held-out fold. 'final' is the last-epoch model (the honest protocol); "
                  "'best epoch' picks the epoch with hindsight on the validation fold and is optimistic. "
                  "Std is the population std over folds.")]
    if summaries.empty:
        parts.append(absent("No models/*/summary.json yet (summarize has not run)."))
    else:
        parts.append(table(summaries, "cv"))
    parts.append(learning_curves(out, run_config))
    if not folds.empty:
        parts.append("<h3>Per fold</h3>")
        parts.append(table(folds, "small"))
    return Section("cv", "Cross-validation", "".join(parts))

def section_km(out: Path, run_config: dict | None = None) -> Section:
    from ghanet_pipeline.survival import km

    model_dirs = run_model_dirs(out, run_config)
    if not model_dirs:
        return Section("km", "Kaplan-Meier: held-out risk groups", absent("No models trained in this run: no curves."))
    parts = [note("Each patient appears once, in the fold where it was held out; within each fold it is called "
                  "high risk when its predicted risk is above that fold's threshold (stated below).")]
    for model_dir in model_dirs:
        pooled, notes = held_out_groups(model_dir)
        parts.append(f"<h3>{esc(model_dir.name)}</h3>")
        if pooled.empty:
            parts.append(absent(f"No held-out predictions (fold*/predictions_val.csv) for {model_dir.name}."))
            continue
        result = km.plot(pooled["survival_months"], pooled["censorship"], pooled["risk_group"].to_numpy(),
                         f"{model_dir.name}: held-out folds pooled (n={len(pooled)})")
        p_text = "log-rank p: not defined (a group is empty or there are no events)" if result.p_value is None \
            else f"log-rank p = {result.p_value:.3g}"
        parts.append(f'<div class="km">{figure(data_uri_png(result.png), f"Kaplan-Meier, {model_dir.name}")}'
                     f'<div><p>{esc(p_text)}; high risk n={result.n_high} ({result.events_high} events), '
                     f'low risk n={result.n_low} ({result.events_low} events).</p>'
                     f'<p class="note">Split thresholds:</p><ul class="note">'
                     + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></div></div>")
    return Section("km", "Kaplan-Meier: held-out risk groups", "".join(parts))

def section_predictions(out: Path, run_config: dict | None = None) -> Section:
    pred = read_predictions(out)
    if pred is None:
        return Section("predictions", "Slide-only predictions", absent(
            "No predictions.csv: inference did not run (no models, or no slides)."))
    counts = pred["status"].value_counts().to_dict() if "status" in pred.columns else {}
    groups = pred["risk_group"].value_counts().to_dict() if "risk_group" in pred.columns else {}
    parts = [note(f"{len(pred)} patients: " + ", ".join(f"{v} {k}" for k, v in counts.items())
                  + ("; risk groups: " + ", ".join(f"{v} {k}" for k, v in groups.items() if k) if groups else "")
                  + ". Genomics are not used: risk comes from the slides alone (G-HANet's reconstruction branch).")]
    cols = [c for c in ("case_id", "slide_ids", "status", "reason", "risk", "risk_group", "folds_used") if c in pred.columns]
    shown = pred[cols].copy()
    if "risk" in shown.columns:
        shown["risk"] = pd.to_numeric(shown["risk"], errors="coerce")
    infer_cfg = (run_config or {}).get("infer") or {}
    trained_here = fold_dirs(Layout(out).model(str(infer_cfg.get("model") or "ghanet")).dir)
    if infer_cfg.get("models_dir"):
        parts.append(note(f"Fold models of '{infer_cfg.get('model', 'ghanet')}' from an earlier run: "
                          f"{infer_cfg['models_dir']} (infer.models_dir)."))
    elif trained_here:
        parts.append(note("These patients also trained the fold models (each was in the training part of all but one "
                          "fold), so these risks are in-sample; the held-out Kaplan-Meier curves above are the honest "
                          "estimate. Point infer.models_dir at this run's models/ to predict a new cohort."))
    parts.append(table(shown, "small", max_rows=300))
    return Section("predictions", "Slide-only predictions", "".join(parts))

def section_heatmaps(out: Path, settings: ReportSettings, run_config: dict | None = None) -> Section:
    maps = heatmap_pictures(out, run_slide_ids(run_config))
    if not maps:
        return Section("heatmaps", "Attention heatmaps", absent("No heatmaps (heatmaps/*.png) in this run."))
    shown = maps[: settings.max_heatmaps]
    parts = [note(f"{len(shown)} of {len(maps)} slides (report.max_heatmaps). Morphology attention is the gated "
                  "attention over patches (it sums to 1 over the patient's bag of patches: all the patient's slides); each gene family panel shows "
                  "the association weights over that family's top patches. Arrays and GeoJSON: heatmaps/{slide}.zarr, "
                  "heatmaps/{slide}.geojson.")]
    for png, topk in shown:
        parts.append(f"<h3>{esc(png.stem)}</h3>")
        parts.append(figure(image_data_uri(png, HEATMAP_MAX_SIDE, photo=True), f"{png.stem}: attention overlays", "wide"))
        if topk is not None:
            parts.append(figure(image_data_uri(topk, HEATMAP_MAX_SIDE, photo=True), f"{png.stem}: most attended patches", "wide"))
    return Section("heatmaps", "Attention heatmaps", "".join(parts))

ENCODER_KEYS = ("encoder", "dim", "weights", "weights_sha256", "dtype", "patch_size", "target_mpp", "effective_mpp",
                "package_version")

def section_parameters(out: Path, run_config: dict | None) -> Section:
    parts = []
    encoders = first_feature_attrs(out)
    if encoders:
        frame = pd.DataFrame({"attribute": ["features folder", *ENCODER_KEYS]})
        for folder, attrs in encoders.items():
            frame[folder] = [folder, *(getattr(attrs, k, None) for k in ENCODER_KEYS)]
        parts.append("<h3>Encoder (from the feature stores)</h3>")
        parts.append(table(frame, "kv"))
    else:
        parts.append(absent("No usable feature store: the encoder is unknown for this run."))
    parts.append("<h3>Run configuration</h3>")
    if run_config:
        headline = []
        for section, keys in (("tissue", ("target_mpp", "patch_size", "overlap", "min_tissue_fraction")),
                              ("features", ("encoder", "weights", "dtype")),
                              ("train", ("models", "epochs", "lr", "attention_mode", "max_patches")),
                              ("infer", ("model", "fold", "models_dir"))):
            for key in keys:
                value = (run_config.get(section) or {}).get(key)
                headline.append({"setting": f"{section}.{key}", "value": _fmt(value) if value is not None else "null"})
        parts.append(table(pd.DataFrame(headline), "kv"))
        text = json.dumps(run_config, indent=2, sort_keys=True, default=str)
        parts.append(f"<details><summary>whole configuration (JSON)</summary><pre>{esc(text)}</pre></details>")
    else:
        parts.append(absent("The run configuration was not passed (--run-config)."))
    return Section("parameters", "Encoder and parameters", "".join(parts))

def section_timings(out: Path) -> Section:
    bench = read_benchmarks(out)
    if bench.empty:
        return Section("timings", "Timings", absent("No Snakemake benchmark files (benchmarks/*/*.tsv): "
                                                    "timings are recorded only when the workflow runs the stages."))
    summary = bench.groupby("rule", sort=False).agg(
        jobs=("s", "size"), total_s=("s", "sum"), mean_s=("s", "mean"), max_s=("s", "max"),
        peak_rss_mb=("max_rss_mb", "max")).reset_index()
    order = ["demo", "demo_cohort", "tissue", "manifest", "features", "export_clam", "genomics", "train", "summarize",
             "infer", "report"]
    summary["_o"] = summary["rule"].map(lambda r: order.index(r) if r in order else len(order))
    summary = summary.sort_values(["_o", "rule"]).drop(columns="_o")
    total = summary["total_s"].sum()
    text = note(f"Wall-clock seconds per job from Snakemake's benchmark files; {total:.0f} s of job time in all "
                "(jobs may have run in parallel). The report's own timing is written after it finishes.")
    return Section("timings", "Timings per stage", text + table(summary, "small"))

# ----------------------------------------------------------------------------- page

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:18px 32px}header h1{margin:0;font-size:24px}
header p{margin:4px 0 0;opacity:.85}
nav{background:#e8edf3;padding:8px 32px;position:sticky;top:0;border-bottom:1px solid #cfd8e3}
nav a{margin-right:16px;color:#1f3a5f;text-decoration:none;font-size:14px}
main{padding:8px 32px 40px}section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:8px 20px 16px;margin:16px 0}
h2{color:#1f3a5f;border-bottom:1px solid #e1e4e8;padding-bottom:4px}h3{margin:16px 0 6px;font-size:16px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #dde;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f7}tbody tr:nth-child(even){background:#fafbfc}td{max-width:520px;overflow-wrap:anywhere}
table.failed-slides th{background:#fbe3e1}
.absent{color:#8a5a00;background:#fff6e0;border-left:4px solid #e0a800;padding:6px 10px}
.note{color:#555;font-size:13px}.ok{color:#1e7d32;font-weight:bold}.failed{color:#b3261e;font-weight:bold}
.gallery{display:flex;flex-wrap:wrap;gap:10px}figure{margin:6px 0}figure.thumb img{max-width:300px;max-height:300px;border:1px solid #ccc}
figure.wide img{max-width:100%;border:1px solid #ccc}figcaption{font-size:12px;color:#555;overflow-wrap:anywhere;max-width:300px}
figure.wide figcaption{max-width:none}.km{display:flex;gap:20px;align-items:flex-start;flex-wrap:wrap}.km img{max-width:600px}.km>div{flex:1 1 320px}
pre{background:#f6f8fa;padding:10px;font-size:12px;overflow:auto;max-height:480px}
"""

def render(sections: Iterable[Section], title: str) -> str:
    sections = list(sections)
    nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>whole-slide images to a slide-only G-HANet prognosis model</p></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )

def _guarded(name: str, build: Callable[[], Section]) -> Section:
    """A section whose builder failed is shown as such; the rest of the report still renders."""
    try:
        return build()
    except Exception as err:  # noqa: BLE001 - the report must render whatever the run left
        log.exception("report section %s failed", name)
        return Section(name, name, absent(f"This section could not be built: {type(err).__name__}: {err}"))

def build_report(out: Path, settings: ReportSettings, run_config: dict | None = None) -> str:
    out = Path(out)
    builders: list[tuple[str, Callable[[], Section]]] = [
        ("overview", lambda: section_overview(out, run_config)),
        ("cohort", lambda: section_cohort(out, run_config)),
        ("qc", lambda: section_qc(out, settings, run_config)),
        ("genomics", lambda: section_genomics(out)),
        ("cv", lambda: section_cv(out, run_config)),
        ("km", lambda: section_km(out, run_config)),
        ("predictions", lambda: section_predictions(out, run_config)),
        ("heatmaps", lambda: section_heatmaps(out, settings, run_config)),
        ("parameters", lambda: section_parameters(out, run_config)),
        ("timings", lambda: section_timings(out)),
    ]
    return render((_guarded(name, b) for name, b in builders), "ghanet-pipeline report")
