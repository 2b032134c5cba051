"""Train one model on one cross-validation fold (``ghanet train``; several folds of one job are
trained one after another by ``stages.train``). ``training.summary`` gathers the folds of a model
into ``summary.json`` (``ghanet summarize``).

Recipe (docs/model.md): Adam (lr 2e-4, weight decay 1e-5), one patient per step,
gradients accumulated over ``grad_accum`` patients (the remainder is stepped and zeroed at the
end of each epoch), class-balanced sampling with replacement over the bin x censorship labels,
loss = survival NLL + ``recon_weight`` x reconstruction (G-HANet only; 0 for ghanet_norecon).
Deterministic on CPU for a seed. ``train.precision``: ``auto`` = bf16 autocast on CUDA, fp32 on
CPU (bit-identical reruns); ``bf16`` also on CPU (opt-in, ~1.7x per step where the CPU has bf16).
Each epoch trains and predicts the validation fold only; the training set is predicted once, at
the end (train c-index of the last epoch, the train median risk of the final and of the best
checkpoint).

Outputs in ``--out``: ``checkpoint_final.pt``, ``checkpoint_best.pt`` (selected on the
validation fold: optimistic), ``metrics.csv`` (per epoch: epoch, loss, nll, recon, val_loss,
val_cindex, train_cindex (last epoch only, else NaN), lr, seconds), ``predictions_val.csv``,
``result.json``, ``train.log``; ``resume.pt`` while running (the next run resumes from it when
its configuration matches, and deletes it when done).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ghanet_pipeline import __version__
from ghanet_pipeline.config import SCHEDULING_KEYS, TrainSettings
from ghanet_pipeline.contracts.base import ContractError, read_json_record
from ghanet_pipeline.contracts.training import (
    BEST_NOTE,
    SELECTION_BEST,
    SELECTION_FINAL,
    CheckpointMeta,
    FoldResult,
)
from ghanet_pipeline.io.layout import (
    FoldFiles,
    GenomicsFiles,
    GenomicsFoldFiles,
    Layout,
)
from ghanet_pipeline.io.store import atomic_path, write_json
from ghanet_pipeline.model import (
    GHANET_MODELS,
    MODEL_NAMES,
    SLIDE_MODELS,
    build_model,
    model_config,
    read_checkpoint,
)
from ghanet_pipeline.model.losses import nll_survival_loss, reconstruction_loss
from ghanet_pipeline.runtime.devices import resolve_device
from ghanet_pipeline.survival.metrics import concordance_index, risk_from_survival
from ghanet_pipeline.training.bags import BagSource, find_patient_stores
from ghanet_pipeline.training.errors import TrainInputError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class GenomicsFold:
    patients: pd.DataFrame  # index case_id: survival_months, censorship, bin, label, slide_ids
    group_names: list[str]
    target_columns: dict[str, list[str]]
    genomics: pd.DataFrame  # index case_id, z-scored genomic columns of fold k
    train_ids: list[str]
    val_ids: list[str]
    bin_edges: list[float]
    n_bins: int


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise TrainInputError(f"{path}: missing; run 'ghanet genomics' first (see docs/contracts.md, genomics)")
    return json.loads(path.read_text())


def _split_slides(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [s for s in str(value).split(";") if s]


def _read_patients(files: GenomicsFiles) -> pd.DataFrame:
    path = files.patients
    if not path.is_file():
        raise TrainInputError(f"{path}: missing; run 'ghanet genomics' first")
    patients = pd.read_csv(path, dtype={"case_id": str, "slide_ids": str})
    needed = {"case_id", "survival_months", "censorship", "bin", "label"}
    if needed - set(patients.columns):
        raise TrainInputError(f"{path}: lacks columns {sorted(needed - set(patients.columns))}")
    if "slide_ids" not in patients.columns:
        patients["slide_ids"] = ""
    return patients.drop_duplicates("case_id").set_index("case_id")


def _read_fold_genomics(files: GenomicsFoldFiles) -> pd.DataFrame:
    if not files.table.is_file():
        raise TrainInputError(f"{files.table}: missing; run 'ghanet genomics' first")
    genomics = pd.read_parquet(files.table)
    if genomics.index.name != "case_id" and "case_id" in genomics.columns:
        genomics = genomics.set_index("case_id")
    genomics.index = genomics.index.astype(str)
    return genomics


def _target_columns(files: GenomicsFoldFiles, group_names: list[str], genomics: pd.DataFrame) -> dict[str, list[str]]:
    targets = _read_json(files.targets)["groups"]
    target_columns: dict[str, list[str]] = {}
    for name in group_names:
        cols = [str(c) for c in targets.get(name, [])]
        if not cols:
            raise TrainInputError(f"{files.targets}: group '{name}' has no target column (need >= 1)")
        absent = [c for c in cols if c not in genomics.columns]
        if absent:
            raise TrainInputError(
                f"{files.targets} names columns absent from {files.table}: {absent[:5]}; rerun 'ghanet genomics'"
            )
        target_columns[name] = cols
    return target_columns


def load_genomics_fold(genomics_dir: str | Path, fold: int) -> GenomicsFold:
    files = GenomicsFiles(Path(genomics_dir))
    patients = _read_patients(files)
    group_names = [str(g["name"]) for g in _read_json(files.groups)["groups"]]
    fold_files = files.fold(fold)
    split = _read_json(fold_files.split)
    genomics = _read_fold_genomics(fold_files)
    target_columns = _target_columns(fold_files, group_names, genomics)
    summary = files.summary
    edges = [float(e) for e in json.loads(summary.read_text()).get("bin_edges", [])] if summary.is_file() else []
    n_bins = len(edges) - 1 if len(edges) >= 2 else int(patients["bin"].max()) + 1
    return GenomicsFold(
        patients=patients,
        group_names=group_names,
        target_columns=target_columns,
        genomics=genomics.astype("float32"),
        train_ids=[str(c) for c in split["train"]],
        val_ids=[str(c) for c in split["val"]],
        bin_edges=edges,
        n_bins=n_bins,
    )


@dataclass
class Patient:
    case_id: str
    survival_months: float
    censorship: int
    bin: int
    label: int
    genomics: torch.Tensor | None  # all genomic columns (SNN input)
    targets: list[torch.Tensor]  # per group, the selected target columns (G-HANet)


@dataclass
class Cohort:
    train: list[Patient]
    val: list[Patient]
    excluded: list[dict[str, str]]
    bags: BagSource | None
    feature_dim: int
    encoder: str


def _make_patient(case_id: str, gf: GenomicsFold, with_genomics: bool) -> Patient:
    row = gf.patients.loc[case_id]
    genomics, targets = None, []
    if with_genomics:
        values = gf.genomics.loc[case_id]
        genomics = torch.tensor(values.to_numpy(dtype=np.float32))
        targets = [torch.tensor(values[cols].to_numpy(dtype=np.float32)) for cols in gf.target_columns.values()]
    return Patient(case_id, float(row["survival_months"]), int(row["censorship"]), int(row["bin"]),
                   int(row["label"]), genomics, targets)


def build_cohort(
    model_name: str, gf: GenomicsFold, features_dir: str | Path | None, cache_bytes: int | None,
    shared_bags: dict | None = None,
) -> Cohort:
    """Patients of the fold that the model can use; the rest listed in ``excluded`` with a reason.
    ``shared_bags``: bags already read by earlier folds of the job (:class:`BagSource`)."""
    excluded: list[dict[str, str]] = []
    case_ids = list(dict.fromkeys(gf.train_ids + gf.val_ids))
    known = [c for c in case_ids if c in gf.patients.index]
    excluded += [{"case_id": c, "reason": "not in patients.csv"} for c in case_ids if c not in gf.patients.index]

    bags, dim, encoder = None, 0, ""
    if model_name in SLIDE_MODELS:
        if features_dir is None:
            raise TrainInputError(f"model {model_name} needs --features-dir (slide features); only snn runs without")
        found = find_patient_stores({c: _split_slides(gf.patients.loc[c, "slide_ids"]) for c in known}, features_dir)
        excluded += found.excluded
        if not found.stores:
            raise TrainInputError(f"no patient of fold has usable feature stores in {features_dir}")
        bags = BagSource(found.stores, cache_bytes, shared=shared_bags)
        dim, encoder = found.dim, found.encoder
        known = [c for c in known if c in found.stores]

    def usable(case_id: str, needs_genomics: bool) -> bool:
        if needs_genomics and case_id not in gf.genomics.index:
            excluded.append({"case_id": case_id, "reason": "no row in genomics.parquet"})
            return False
        return True

    train_needs = model_name in GHANET_MODELS or model_name == "snn"
    val_needs = model_name == "snn"
    train_set = set(gf.train_ids)
    train = [_make_patient(c, gf, train_needs) for c in known if c in train_set and usable(c, train_needs)]
    val_set = set(gf.val_ids)
    val = [_make_patient(c, gf, val_needs) for c in known if c in val_set and usable(c, val_needs)]
    for item in excluded:
        log.warning("excluded patient %s: %s", item["case_id"], item["reason"])
    if not train:
        raise TrainInputError("no usable training patient in this fold (see the warnings above)")
    return Cohort(train, val, excluded, bags, dim, encoder)


# ----------------------------------------------------------------------------- steps


def model_input(model: torch.nn.Module, patient: Patient, bags: BagSource | None, rows=None) -> torch.Tensor:
    if model.modality == "genomics":
        return patient.genomics
    return bags.get(patient.case_id, rows)


def balanced_order(labels: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """len(labels) draws with replacement, each class equally likely (weight N / n_class)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = len(labels) / counts[labels]
    return rng.choice(len(labels), size=len(labels), replace=True, p=weights / weights.sum())


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The sampling stream of one epoch: a function of (seed, epoch), so a resumed run draws the same."""
    return np.random.default_rng([int(seed), int(epoch)])


def autocast_for(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA (``auto``/``bf16``) and, opt-in, on CPU (``bf16``: about 1.7x per
    step on CPUs with bf16 support, survival curves within ~1e-3); fp32 otherwise, so CPU reruns
    stay bit-identical by default."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    patients: list[Patient],
    bags: BagSource | None,
    settings: TrainSettings,
    recon_weight: float,
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    """One pass over the (class-balanced) training patients; mean loss, nll and recon.

    Only the training pass: no prediction of the training set (its statistics are taken once,
    at the end of the run)."""
    model.train()
    rng = epoch_rng(settings.seed, epoch)
    order = balanced_order([p.label for p in patients], rng)
    autocast = autocast_for(device, settings.precision)
    # Sums stay on the device: one host sync per epoch, not three per step.
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    optimizer.zero_grad(set_to_none=True)
    for step, index in enumerate(tqdm(order, desc=f"epoch {epoch}", unit="patient", mininterval=10, leave=False)):
        patient = patients[index]
        rows = None
        if settings.max_patches and bags is not None and model.modality == "slide":
            n = bags.n_patches(patient.case_id)
            if n > settings.max_patches:
                rows = np.sort(rng.choice(n, size=settings.max_patches, replace=False))
        x = model_input(model, patient, bags, rows).to(device, non_blocking=True)
        with autocast:
            out = model(x)
        nll = nll_survival_loss(out["hazards"], patient.bin, patient.censorship)
        recon = reconstruction_loss(out["recon"], patient.targets) if out["recon"] else torch.zeros((), device=device)
        loss = nll + recon_weight * recon
        (loss / settings.grad_accum).backward()
        if (step + 1) % settings.grad_accum == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sums += torch.stack([loss.detach(), nll.detach(), recon.detach().float()]).double()
    if len(order) % settings.grad_accum:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    means = (sums / len(order)).tolist()
    return {"loss": means[0], "nll": means[1], "recon": means[2]}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, patients: list[Patient], bags: BagSource | None, device: torch.device,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Survival curves S and hazards, both (n_patients, n_bins) float32, in eval mode, all patches."""
    model.eval()
    autocast = autocast_for(device, precision)
    survival, hazards = [], []
    for patient in patients:
        with autocast:
            out = model(model_input(model, patient, bags).to(device))
        survival.append(out["S"].float().reshape(-1).cpu().numpy())
        hazards.append(out["hazards"].float().reshape(-1).cpu().numpy())
    if not survival:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
    return np.stack(survival), np.stack(hazards)


def predict(
    model: torch.nn.Module, patients: list[Patient], bags: BagSource | None, device: torch.device,
    precision: str = "auto",
) -> np.ndarray:
    """Survival curves S (n_patients, n_bins) of the model in eval mode, all patches."""
    return evaluate(model, patients, bags, device, precision)[0]


def nll_of(patients: list[Patient], hazards: np.ndarray) -> float:
    """Mean survival NLL of eval-mode hazards (the validation loss of the learning curves)."""
    if not patients:
        return math.nan
    h = torch.from_numpy(hazards)
    return float(np.mean([float(nll_survival_loss(h[i], p.bin, p.censorship)) for i, p in enumerate(patients)]))


def cindex_of(patients: list[Patient], survival: np.ndarray) -> float:
    if not patients:
        return math.nan
    risk = risk_from_survival(survival)
    return concordance_index(risk, [p.survival_months for p in patients], [p.censorship for p in patients])


def median_risk(survival: np.ndarray) -> float:
    """The median risk of the training set under some weights: inference's risk-group threshold."""
    return float(np.median(risk_from_survival(survival)))


# ----------------------------------------------------------------------------- outputs


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class DiskFullError(OSError):
    """A checkpoint could not be written for lack of space; knows the file and the model's size."""

    def __init__(self, path: Path, weights_bytes: int) -> None:
        super().__init__(f"disk full while writing {path}")
        self.path = path
        self.weights_bytes = weights_bytes


def save_torch(obj: dict, path: Path) -> None:
    from ghanet_pipeline.io.store import is_disk_full

    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as err:  # torch's zip writer says "unexpected pos", naming no file
        if not is_disk_full(err):
            raise
        weights = sum(t.numel() * t.element_size() for t in (obj.get("state_dict") or {}).values())
        raise DiskFullError(Path(path), weights) from err


def save_checkpoint(meta: CheckpointMeta, weights: dict[str, torch.Tensor], path: Path) -> None:
    save_torch(meta.checkpoint(weights), path)


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def write_metrics(history: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False, float_format="%.6g")


def write_predictions(patients: list[Patient], survival: np.ndarray, n_bins: int, path: Path) -> None:
    table = pd.DataFrame({
        "case_id": [p.case_id for p in patients],
        "risk": risk_from_survival(survival) if len(patients) else [],
        "survival_months": [p.survival_months for p in patients],
        "censorship": [p.censorship for p in patients],
    })
    for b in range(n_bins):
        table[f"S_{b}"] = survival[:, b] if len(patients) else []
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


@dataclass(frozen=True)
class RunSpec:
    model_name: str
    fold: int
    model_config: dict
    recon_weight: float
    fingerprint: str
    checkpoint: CheckpointMeta  # what both checkpoints record; epoch, median risk and selection set on saving
    n_bins: int


def _model_config_for(model_name: str, gf: GenomicsFold, cohort: Cohort, settings: TrainSettings) -> dict:
    if model_name in GHANET_MODELS:
        return model_config(model_name, feature_dim=cohort.feature_dim,
                            group_sizes=[len(gf.target_columns[g]) for g in gf.group_names],
                            n_bins=gf.n_bins, attention_mode=settings.attention_mode)
    if model_name == "abmil":
        return model_config("abmil", feature_dim=cohort.feature_dim, n_bins=gf.n_bins)
    return model_config("snn", genomic_dim=gf.genomics.shape[1], n_bins=gf.n_bins)


def run_spec(model_name: str, fold: int, gf: GenomicsFold, cohort: Cohort, settings: TrainSettings) -> RunSpec:
    config = _model_config_for(model_name, gf, cohort, settings)
    recon_weight = settings.recon_weight if model_name == "ghanet" else 0.0
    ignored = ("models", "device", "cache_gb", *SCHEDULING_KEYS["train"])
    relevant = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ignored}
    ids = json.dumps([[p.case_id for p in cohort.train], [p.case_id for p in cohort.val]])
    fingerprint = json.dumps({
        "model": model_name, "fold": fold, "model_config": config, "settings": relevant,
        "patients": hashlib.sha256(ids.encode()).hexdigest(),
    }, sort_keys=True)
    meta = CheckpointMeta(
        model=model_name,
        model_config=config,
        encoder=cohort.encoder,
        feature_dim=int(cohort.feature_dim),
        group_names=tuple(gf.group_names),
        target_columns={k: list(v) for k, v in gf.target_columns.items()},
        genomic_columns=tuple(str(c) for c in gf.genomics.columns) if model_name == "snn" else (),
        bin_edges=tuple(gf.bin_edges),
        n_bins=int(gf.n_bins),
        fold=int(fold),
        package_version=__version__,
    )
    return RunSpec(model_name, fold, config, recon_weight, fingerprint, meta, int(gf.n_bins))


def try_resume(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file: start over rather than fail
        log.warning("%s unreadable (%s); starting from scratch", path, err)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("%s was written with another configuration or patient set; starting from scratch", path)
        return None
    return state


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainingRun:
    """What changes while a fold trains; ``resume.pt`` keeps it after every epoch."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    history: list[dict]
    best: dict  # {"cindex", "epoch"} of the best validation c-index so far (epoch 0: none yet)
    start_epoch: int = 1


def start_run(spec: RunSpec, settings: TrainSettings, device: torch.device, files: FoldFiles) -> TrainingRun:
    """A fresh model and optimiser, or the state of ``resume.pt`` when it was written by this configuration."""
    torch.manual_seed(settings.seed)
    model = build_model(spec.model_name, spec.model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    run = TrainingRun(model, optimizer, [], {"cindex": -math.inf, "epoch": 0})
    state = try_resume(files.resume, spec.fingerprint)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        run.history, run.best = list(state["history"]), dict(state["best"])
        run.start_epoch = int(state["epoch"]) + 1
        log.info("resuming from %s after epoch %d", files.resume, state["epoch"])
    return run


def save_resume(run: TrainingRun, spec: RunSpec, epoch: int, device: torch.device, path: Path) -> None:
    save_torch({
        "fingerprint": spec.fingerprint, "epoch": epoch, "state_dict": cpu_state(run.model),
        "optimizer": run.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "history": run.history, "best": run.best,
    }, path)


def run_epochs(run: TrainingRun, cohort: Cohort, spec: RunSpec, settings: TrainSettings, device: torch.device,
               files: FoldFiles) -> np.ndarray | None:
    """Train the remaining epochs; returns the last epoch's validation curves (None if none was left)."""
    s_val = None
    for epoch in range(run.start_epoch, settings.epochs + 1):
        t0 = time.time()
        losses = train_epoch(run.model, run.optimizer, cohort.train, cohort.bags, settings, spec.recon_weight, epoch,
                             device)
        s_val, h_val = evaluate(run.model, cohort.val, cohort.bags, device, settings.precision)
        c_val, val_loss = cindex_of(cohort.val, s_val), nll_of(cohort.val, h_val)
        # train_cindex is filled at the last epoch only: predicting the training set every epoch
        # cost ~23 % of the epoch (issue 15); the learning curve uses the training loss.
        run.history.append({"epoch": epoch, **losses, "val_loss": val_loss, "val_cindex": c_val,
                            "train_cindex": math.nan, "lr": run.optimizer.param_groups[0]["lr"],
                            "seconds": round(time.time() - t0, 3)})
        log.info("epoch %d/%d: loss %.4f (nll %.4f, recon %.4f), val loss %.4f, val c-index %.4f", epoch,
                 settings.epochs, losses["loss"], losses["nll"], losses["recon"], val_loss, c_val)
        if math.isfinite(c_val) and c_val > run.best["cindex"]:
            run.best = {"cindex": c_val, "epoch": epoch}
            # its train median risk is added at the end of the run (complete_best), from these weights
            meta = spec.checkpoint.replace(epoch=epoch, train_median_risk=None, val_cindex=c_val,
                                           selection=SELECTION_BEST)
            save_checkpoint(meta, cpu_state(run.model), files.checkpoint("best"))
        write_metrics(run.history, files.metrics)
        save_resume(run, spec, epoch, device, files.resume)
    return s_val


@dataclass(frozen=True)
class FinalStatistics:
    cindex_val: float  # of the final weights
    cindex_train: float
    train_median_risk: float


def complete_best(run: TrainingRun, final: CheckpointMeta, weights: dict[str, torch.Tensor], cohort: Cohort,
                  settings: TrainSettings, device: torch.device, files: FoldFiles) -> None:
    """Give ``checkpoint_best.pt`` (saved during the loop without it) the train median risk of
    its own weights: one training-set pass at the end instead of one per improvement."""
    path = files.checkpoint("best")
    if run.best["epoch"] == 0:  # no finite validation c-index: the final model stands in
        save_checkpoint(final.replace(selection=SELECTION_BEST), weights, path)
        run.best = {"cindex": final.val_cindex, "epoch": settings.epochs}
        return
    meta, best_weights = read_checkpoint(path)
    if run.best["epoch"] == settings.epochs:  # the best weights are the final weights
        save_checkpoint(meta.replace(train_median_risk=final.train_median_risk), best_weights, path)
        return
    model = build_model(meta.model, dict(meta.model_config))
    model.load_state_dict(best_weights)
    survival = predict(model.to(device), cohort.train, cohort.bags, device, settings.precision)
    save_checkpoint(meta.replace(train_median_risk=median_risk(survival)), best_weights, path)


def finish_run(run: TrainingRun, cohort: Cohort, spec: RunSpec, settings: TrainSettings, device: torch.device,
               files: FoldFiles, s_val: np.ndarray | None) -> FinalStatistics:
    """Train-set statistics once, from the final weights (the median risk, the risk-group
    threshold of inference, and the train c-index of the last epoch); both checkpoints, the
    final metrics and the validation predictions."""
    t0 = time.time()
    s_train = predict(run.model, cohort.train, cohort.bags, device, settings.precision)
    stats_median, c_train = median_risk(s_train), cindex_of(cohort.train, s_train)
    if run.history:
        run.history[-1]["train_cindex"] = c_train
    if s_val is None:  # resumed after the last epoch; else the last epoch's are these weights' own
        s_val = predict(run.model, cohort.val, cohort.bags, device, settings.precision)
    c_final = cindex_of(cohort.val, s_val)
    final = spec.checkpoint.replace(epoch=settings.epochs, train_median_risk=stats_median, val_cindex=c_final,
                                    selection=SELECTION_FINAL)
    weights = cpu_state(run.model)
    save_checkpoint(final, weights, files.checkpoint("final"))
    complete_best(run, final, weights, cohort, settings, device, files)
    log.info("train-set statistics and final predictions: %.1f s", time.time() - t0)
    write_metrics(run.history, files.metrics)
    write_predictions(cohort.val, s_val, spec.n_bins, files.predictions)
    return FinalStatistics(c_final, c_train, stats_median)


def fold_result(spec: RunSpec, cohort: Cohort, run: TrainingRun, stats: FinalStatistics, settings: TrainSettings,
                device: torch.device, started: float) -> FoldResult:
    return FoldResult(
        model=spec.model_name,
        fold=spec.fold,
        cindex_final=_finite_or_none(stats.cindex_val),
        cindex_best=_finite_or_none(run.best["cindex"]),
        best_epoch=int(run.best["epoch"]),
        best_note=BEST_NOTE,
        cindex_train_final=_finite_or_none(stats.cindex_train),
        epochs=settings.epochs,
        n_train=len(cohort.train),
        n_val=len(cohort.val),
        excluded=tuple(cohort.excluded),
        train_median_risk=_finite_or_none(stats.train_median_risk),
        device=str(device),
        seconds=round(time.time() - started, 2),
        package_version=__version__,
        fingerprint=spec.fingerprint,
    )


def train_fold(
    model_name: str,
    fold: int,
    genomics_dir: str | Path,
    features_dir: str | Path | None,
    out_dir: str | Path,
    settings: TrainSettings,
    keep_complete: bool = False,
    shared_bags: dict | None = None,
) -> dict[str, Any]:
    """Train one model on one fold; writes every output of the stage (``out_dir`` is the fold
    folder, :class:`FoldFiles`) and returns what it wrote to result.json.

    ``keep_complete``: a fold whose outputs are complete and current (:func:`incomplete_reason`)
    is kept as it is, not trained again (a job of several folds rerun after a crash).
    ``shared_bags``: one dict for all folds of a job, so each feature store is read once.
    """
    if model_name not in MODEL_NAMES:
        raise TrainInputError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}")
    started = time.time()
    files = FoldFiles(Path(out_dir))
    files.dir.mkdir(parents=True, exist_ok=True)
    # CPU runs are bit-identical for a seed and a thread count without torch's deterministic mode
    # (tests/test_reliability_determinism.py); that mode imports TorchInductor (~1.5 s a job) and
    # fills every new tensor with NaN.
    device = resolve_device(settings.device, "train.device")

    gf = load_genomics_fold(genomics_dir, fold)
    cache_bytes = None if settings.cache_gb is None else int(settings.cache_gb * 1e9)
    cohort = build_cohort(model_name, gf, features_dir, cache_bytes, shared_bags)
    spec = run_spec(model_name, fold, gf, cohort, settings)
    if keep_complete:
        reason = incomplete_reason(files, spec, newest_input_mtime(genomics_dir, cohort))
        if not reason:
            log.info("%s fold %d: complete and current, kept (%s)", model_name, fold, files.result)
            return read_json_record(FoldResult, files.result).to_attrs()
        log.info("%s fold %d: %s; training", model_name, fold, reason)
    log.info("%s fold %d: %d training, %d validation patients, %d excluded; device %s", model_name, fold,
             len(cohort.train), len(cohort.val), len(cohort.excluded), device)

    run = start_run(spec, settings, device, files)
    s_val = run_epochs(run, cohort, spec, settings, device, files)
    stats = finish_run(run, cohort, spec, settings, device, files, s_val)
    result = fold_result(spec, cohort, run, stats, settings, device, started)
    write_json(files.result, result.to_attrs())
    files.resume.unlink(missing_ok=True)
    log.info("%s fold %d done: final c-index %s, best %s (epoch %d, optimistic)", model_name, fold,
             result.cindex_final, result.cindex_best, result.best_epoch)
    return result.to_attrs()


def newest_input_mtime(genomics_dir: str | Path, cohort: Cohort) -> float:
    """The modification time of the newest input of a fold: a genomics file or a feature store."""
    paths = [p for p in Path(genomics_dir).rglob("*") if p.is_file()]
    if cohort.bags is not None:
        paths += [Layout.metadata_of(store.path) for stores in cohort.bags.stores.values() for store in stores]
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def incomplete_reason(files: FoldFiles, spec: RunSpec, inputs_mtime: float) -> str:
    """Why the fold in ``files`` must be trained ("" when it is complete and current): its result,
    final checkpoint and validation predictions exist, the result was written by this model
    configuration, settings and patient set (``fingerprint``), after the newest input."""
    needed = [files.result, files.checkpoint("final"), files.checkpoint("best"), files.predictions]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    try:
        result = read_json_record(FoldResult, files.result)
    except ContractError as err:
        return f"unreadable result ({err})"
    if result.fingerprint != spec.fingerprint:
        return "result written with other settings, model configuration or patients"
    if files.result.stat().st_mtime < inputs_mtime:
        return "inputs newer than the result"
    return ""
