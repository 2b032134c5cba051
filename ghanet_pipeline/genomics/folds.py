"""Cross-validation folds: given split files, or stratified folds made with a seed.

Split files are ``splits_{k}.csv`` for k = 0..K-1 with columns ``train`` and ``val`` of case
ids (ragged: the shorter column ends in empty cells; an unnamed index column is ignored).
Case ids of a split that are not cohort patients are reported and left out of that fold;
cohort patients in neither column of a fold are reported (they are unused in that fold);
a case id in both columns of one fold is an error.

Made folds: each label class (bin x censorship) is shuffled with ``numpy.random.default_rng(seed)``
and dealt round-robin over the folds, continuing where the previous class stopped, so fold
sizes differ by at most one and every class is spread evenly.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SPLIT_NAME = re.compile(r"^splits_(\d+)\.csv$")


class FoldError(ValueError):
    """The folds cannot be made or read as they are."""


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...]
    val: tuple[str, ...]


def split_files(splits_dir: str | Path) -> list[Path]:
    """``splits_0.csv .. splits_{K-1}.csv``; a gap in the numbering is an error."""
    folder = Path(splits_dir)
    if not folder.is_dir():
        raise FoldError(f"splits folder {folder} not found; set 'splits_dir' or leave it null to make folds")
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := SPLIT_NAME.match(p.name))}
    if not found:
        raise FoldError(f"{folder}: no splits_<k>.csv files")
    expected = list(range(len(found)))
    if sorted(found) != expected:
        raise FoldError(f"{folder}: split files must be numbered 0..{len(found) - 1}; found {sorted(found)}")
    return [found[k] for k in expected]


def _ids(column: pd.Series) -> list[str]:
    return [str(v).strip() for v in column if isinstance(v, str) and v.strip()]


def read_split(path: Path) -> tuple[list[str], list[str]]:
    try:
        text = path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n")
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise FoldError(f"{path}: not a readable UTF-8 csv split file: {err}") from err
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("train", "val") if c not in table.columns]
    if missing:
        raise FoldError(f"{path}: missing column(s) {', '.join(missing)}; a split file has columns train, val")
    return _ids(table["train"]), _ids(table["val"])


def _dedupe(ids: list[str], what: str, problems: list[str]) -> list[str]:
    unique = list(dict.fromkeys(ids))
    if len(unique) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        problems.append(f"{what}: case id(s) listed more than once: {', '.join(dup)} (used once)")
    return unique


def read_folds(splits_dir: str | Path, patients: Sequence[str], problems: list[str]) -> list[Fold]:
    """Folds from split files, restricted to ``patients``; problems are appended as lines."""
    cohort = set(patients)
    folds = []
    for k, path in enumerate(split_files(splits_dir)):
        train, val = read_split(path)
        train = _dedupe(train, f"{path.name} train", problems)
        val = _dedupe(val, f"{path.name} val", problems)
        both = sorted(set(train) & set(val))
        if both:
            raise FoldError(f"{path}: case id(s) in both train and val: {', '.join(both)}; fix the split file")
        unknown = [c for c in train + val if c not in cohort]
        if unknown:
            problems.append(
                f"fold {k} ({path.name}): {len(unknown)} case id(s) not among the cohort's usable patients, "
                f"left out of this fold: {', '.join(unknown)}"
            )
        unused = sorted(cohort - set(train) - set(val))
        if unused:
            problems.append(
                f"fold {k} ({path.name}): {len(unused)} cohort patient(s) in neither train nor val "
                f"(unused in this fold): {', '.join(unused)}"
            )
        folds.append(Fold(tuple(c for c in train if c in cohort), tuple(c for c in val if c in cohort)))
    return folds


def make_folds(patients: Sequence[str], labels: Sequence[int], n_folds: int, seed: int) -> list[Fold]:
    """Stratified k folds (see module doc): fold k's val is its share, train the rest."""
    patients = list(patients)
    if len(patients) < n_folds:
        raise FoldError(f"{len(patients)} patient(s) cannot fill {n_folds} folds; lower genomics.n_folds")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    order = np.concatenate([rng.permutation(np.flatnonzero(labels_arr == label)) for label in np.unique(labels_arr)])
    return folds_from_assignment(patients, deal_round_robin(order, n_folds), n_folds)


def deal_round_robin(order: np.ndarray, n_folds: int, start: int = 0) -> np.ndarray:
    """The fold of each patient when ``order`` (patient indices, stratum by stratum, shuffled within)
    is dealt over the folds from fold ``start`` on: fold sizes differ by at most one, every stratum spread."""
    fold_of = np.empty(len(order), dtype=np.int64)
    fold_of[order] = (np.arange(len(order)) + start) % n_folds
    return fold_of


def folds_from_assignment(patients: Sequence[str], fold_of: np.ndarray, n_folds: int) -> list[Fold]:
    """Fold k: val the patients assigned to k, train the rest (both in ``patients`` order)."""
    return [
        Fold(tuple(p for p, a in zip(patients, fold_of) if a != k), tuple(p for p, a in zip(patients, fold_of) if a == k))
        for k in range(n_folds)
    ]


def split_csv(fold: Fold) -> str:
    """A fold as a split file (``splits_{k}.csv``, what :func:`read_split` reads): ragged columns
    end in empty cells, and the leading unnamed index column is MCAT's."""
    train, val = list(fold.train), list(fold.val)
    longest = max(len(train), len(val))
    frame = pd.DataFrame({"train": train + [""] * (longest - len(train)), "val": val + [""] * (longest - len(val))})
    return frame.to_csv(index=True, lineterminator="\n")
