"""Atomic outputs and the Zarr v3 store helpers shared by every stage.

A stage never writes its final path directly: it writes a temporary sibling and renames
it into place when complete, so a crash leaves at most a ``.tmp-*`` folder that the next
run removes, never a partial store that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr

from . import __version__

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_temporaries(path: Path) -> None:
    """Delete leftovers of interrupted writes of ``path`` (``path.tmp-*``)."""
    parent = path.parent
    if not parent.is_dir():
        return
    for leftover in parent.glob(f"{path.name}{TMP_MARK}*"):
        log.info("removing leftover of an interrupted run: %s", leftover)
        _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success replace ``path`` with it.

    Works for files and for directories (Zarr stores). On error the temporary is removed
    and ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        if final.exists() or final.is_symlink():
            _remove(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            _remove(tmp)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_safe(data: Any) -> Any:
    """Round-trip through JSON so Zarr attributes only hold plain types."""
    return json.loads(json.dumps(data, default=_json_default))


def create_group(path: Path, attrs: dict[str, Any]) -> zarr.Group:
    """A new Zarr v3 group at ``path`` (usually the temporary of ``atomic_path``)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update(json_safe({**attrs, "package_version": __version__}))
    return group


def write_array(group: zarr.Group, name: str, data: np.ndarray, chunk_rows: int = 4096) -> zarr.Array:
    chunks = (max(1, min(chunk_rows, data.shape[0] or 1)),) + tuple(data.shape[1:])
    chunks = tuple(max(1, c) for c in chunks)
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks)
    if data.size:
        arr[...] = data
    return arr


def open_store(path: str | Path) -> zarr.Group:
    """Open a finished store read-only, with an error that names the path."""
    p = Path(path)
    if not (p / "zarr.json").is_file():
        raise FileNotFoundError(f"{p}: not a finished Zarr store (no zarr.json); rerun the stage that makes it")
    return zarr.open_group(str(p), mode="r", zarr_format=3)
