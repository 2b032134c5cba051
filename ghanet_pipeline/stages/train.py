"""``ghanet train``: arguments, settings and exit codes; the work is in ``ghanet_pipeline.training.train``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ghanet_pipeline.config import ConfigError, stage_settings
from ghanet_pipeline.io.layout import FoldFiles
from ghanet_pipeline.model import MODEL_NAMES
from ghanet_pipeline.stages.arguments import add_settings_arguments
from ghanet_pipeline.training.train import TrainInputError, train_fold

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=MODEL_NAMES, help="G-HANet or a baseline")
    parser.add_argument("--fold", required=True, type=int, nargs="+",
                        help="fold index k (genomics-dir/fold{k}); several: trained one after another in this process")
    parser.add_argument("--genomics-dir", required=True, help="output folder of 'ghanet genomics'")
    parser.add_argument("--features-dir", help="folder of {slide_id}.zarr feature stores (not needed for snn)")
    parser.add_argument("--out", required=True, nargs="+",
                        help="output folder of each --fold, in the same order, e.g. OUT/models/{model}/fold{k}")
    parser.add_argument("--keep-complete", action="store_true",
                        help="keep a fold whose outputs are complete and current instead of training it again "
                             "(what a job of several folds does when it is rerun after a crash)")
    add_settings_arguments(parser)


def _disk_full_message(err: BaseException, out: Path, model_name: str) -> str:
    """What a full disk during training means: the file, the space a fold needs, the file system.

    A checkpoint holds the weights (W), ``resume.pt`` the weights plus Adam's two moment buffers (3 W).
    """
    from ghanet_pipeline.io.store import disk_space_mb, mount_point

    path = getattr(err, "path", None) or getattr(err, "filename", None) or out
    weights = getattr(err, "weights_bytes", 0)
    mount = mount_point(out)
    free, total = disk_space_mb(out)
    if weights:
        ckpt, resume = weights / 1e6, 3 * weights / 1e6
        need = (f"a {model_name} fold needs about {resume + 2 * ckpt:.0f} MB (resume.pt ~{resume:.0f} MB + two "
                f"checkpoints ~{ckpt:.0f} MB each, and ~{resume:.0f} MB more for a moment while resume.pt is replaced)")
    else:
        need = f"a {model_name} fold needs room for resume.pt (3x the model's weights) and two checkpoints"
    return (f"disk full while writing {path}: {need}; {mount} has {free:.0f} MB free of {total:.0f} MB. "
            f"Free space on {mount} "
            "(or give --out a larger disk) and rerun: training resumes from the last finished epoch")


def main(args: argparse.Namespace) -> int:
    """Each fold in turn, each with its own train.log; a failed fold does not stop the next. Exit 1 if any failed."""
    if len(args.fold) != len(args.out):
        raise ConfigError(f"--fold lists {len(args.fold)} fold(s) but --out {len(args.out)} folder(s): give one each")
    settings = stage_settings("train", args.config, args.settings)
    shared_bags: dict = {}  # the folds of this job read each feature store once
    failed = [fold for fold, out in zip(args.fold, args.out)
              if not _train_one(args, fold, Path(out), settings, shared_bags)]
    if failed and len(args.fold) > 1:
        log.error("%s: fold(s) %s failed (see their train.log)", args.model, ", ".join(map(str, failed)))
    return 1 if failed else 0


def _train_one(args: argparse.Namespace, fold: int, out: Path, settings, shared_bags: dict) -> bool:
    from ghanet_pipeline.io.store import DamagedStoreError, is_disk_full

    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(FoldFiles(out).log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        train_fold(args.model, fold, args.genomics_dir, args.features_dir, out, settings,
                   keep_complete=args.keep_complete, shared_bags=shared_bags)
    except (TrainInputError, ValueError, FileNotFoundError, DamagedStoreError) as err:
        log.error("%s", err)
        return False
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):
            raise
        log.error("%s", _disk_full_message(err, out, args.model))
        return False
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return True
