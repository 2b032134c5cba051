"""Atomic outputs and the Zarr v3 store helpers shared by every stage.

A stage never writes its final path directly: it writes a temporary sibling and renames
it into place when complete, so a crash leaves at most a ``.tmp-*`` folder that the next
run removes, never a partial store that looks finished.

Integrity of the stores (issue 13): a file deleted or damaged *after* a store was finished
(a chunk removed, truncated, overwritten) must never read as data. So every array written by
:func:`write_array` or sealed by :func:`seal_array` carries, in its attributes
(``ghanet_integrity``), its row count and one CRC-32 per row chunk of the decoded values; float
arrays use NaN as fill value and every chunk is written, so a missing chunk can neither pass
as data nor as an "all fill" chunk. :func:`read_array` is the one reader of stored arrays: it
checks that every chunk file it needs exists, decodes, compares the checksums, and turns any
failure (missing chunk, ``Zstd decompression error``, checksum mismatch, missing array) into
:class:`DamagedStoreError`, whose message names the slide, the store and how to rebuild it.
Arrays written before these records ("legacy") are checked for missing chunks of float arrays
only (an integer chunk that is all zeros was legitimately never written, so its absence proves
nothing).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import shlex
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import zarr

from ghanet_pipeline import __version__
from ghanet_pipeline.io.layout import Layout

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


INTEGRITY_ATTR = "ghanet_integrity"
INTEGRITY_ALGORITHM = "crc32-of-decoded-row-chunks"


class DamagedStoreError(ValueError):
    """A finished store lost or damaged a file: the message names slide, store and the rebuild command.

    A ``ValueError`` so that stage entry points that report bad inputs and exit non-zero
    (features: 2, train: 1) report it too; readers that skip unusable slides re-raise it,
    because a damaged store is not a bad slide but a broken run output that must be rebuilt.
    """

    def __init__(self, store_path: str | Path, slide_id: str, problem: str, rebuild: str) -> None:
        self.store_path = Path(store_path)
        self.slide_id = slide_id
        self.problem = problem
        self.rebuild = rebuild
        self.message = f"slide {slide_id}: store {store_path} is damaged: {problem}. To rebuild it: {rebuild}"
        super().__init__(self.message)

    def __str__(self) -> str:  # OSError subclasses below would format their args as errno/strerror
        return self.message

    def __reduce__(self):  # picklable across processes despite the four-argument constructor
        return (type(self), (self.store_path, self.slide_id, self.problem, self.rebuild))


class UnfinishedStoreError(DamagedStoreError, FileNotFoundError):
    """A store folder without its ``zarr.json``: also a ``FileNotFoundError`` for callers that expect one."""


def _fill_value(dtype: np.dtype) -> Any:
    # NaN cannot pass as a feature (the features stage refuses non-finite values).
    return float("nan") if np.dtype(dtype).kind == "f" else None


def create_row_array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype: Any, chunk_rows: int) -> zarr.Array:
    """A new array chunked along rows only, NaN-filled if float, every chunk written (even empty ones)."""
    chunks = (max(1, min(chunk_rows, shape[0] or 1)),) + tuple(max(1, int(c)) for c in shape[1:])
    return group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=_fill_value(dtype),
                              config={"write_empty_chunks": True})


def _chunk_checksums(data: np.ndarray, chunk_rows: int) -> list[int]:
    data = np.ascontiguousarray(data)
    return [zlib.crc32(memoryview(data[a:a + chunk_rows]).cast("B")) for a in range(0, data.shape[0], chunk_rows)]


def _record(arr: zarr.Array, checksums: list[int]) -> None:
    arr.attrs[INTEGRITY_ATTR] = {"algorithm": INTEGRITY_ALGORITHM, "rows": int(arr.shape[0]),
                                 "chunk_rows": int(arr.chunks[0]), "shape": [int(n) for n in arr.shape],
                                 "chunks": checksums}


def write_array(group: zarr.Group, name: str, data: np.ndarray, chunk_rows: int = 4096) -> zarr.Array:
    """Write ``data`` as array ``name`` with its integrity record (row count, per-chunk CRC-32)."""
    arr = create_row_array(group, name, data.shape, data.dtype, chunk_rows)
    if data.size:
        arr[...] = data
    _record(arr, _chunk_checksums(data, arr.chunks[0]) if data.ndim else [])
    return arr


def seal_array(arr: zarr.Array) -> None:
    """Record the integrity of an array written piecewise, from what is on disk (read back once)."""
    rows = arr.chunks[0] if arr.ndim else 1
    checksums = []
    for a in range(0, arr.shape[0] if arr.ndim else 0, rows):
        checksums.append(zlib.crc32(memoryview(np.ascontiguousarray(arr[a:a + rows])).cast("B")))
    _record(arr, checksums)


# ----------------------------------------------------------------------------- reading


def _store_root(group: zarr.Group) -> Path | None:
    root = getattr(group.store, "root", None)
    if root is None:
        return None
    return Path(root) / group.path if group.path else Path(root)


def rebuild_hint(store_path: str | Path, attrs: Mapping[str, Any] | None = None) -> str:
    """How to rebuild a store: by Snakemake (delete it and rerun) and by hand (the stage command)."""
    path = Path(store_path).absolute()
    attrs = dict(attrs or {})
    placed_kind, layout = Layout.of_store(path)
    kind = str(attrs.get("ghanet_store") or placed_kind)
    slide_id = str(attrs.get("slide_id") or path.name.removesuffix(".zarr"))
    q = shlex.quote
    snakemake = (f"delete it (rm -r {q(str(path))}) and rerun the same snakemake command, which rebuilds it and "
                 "everything made from it")
    if kind == "features":
        tiles = str(attrs.get("tiles_store") or (layout.tiles_dir / path.name if layout else "TILES_STORE"))
        slide = str(attrs.get("slide_path") or "SLIDE_FILE")
        return (f"{snakemake}; by hand: ghanet features --tiles {q(tiles)} --slide-path {q(slide)} "
                f"--out {q(str(path))} --config config.yaml, then rerun the command that failed")
    if kind == "tiles":
        slide = str(attrs.get("source_path") or "SLIDE_FILE")
        return (f"{snakemake} (the slide's features are rebuilt too); by hand: ghanet tissue --slide-id {q(slide_id)} "
                f"--slide-path {q(slide)} --out-dir {q(str(layout.root if layout else path.parent.parent))} --config config.yaml, "
                "then rebuild its features store")
    if kind == "heatmaps":
        return f"{snakemake}; by hand: rerun ghanet infer"
    return f"{snakemake}; by hand: rerun the stage that wrote it"


def _where(group: zarr.Group, slide_id: str | None, store_path: str | Path | None,
           rebuild: str | None) -> tuple[Path, str, str]:
    try:
        attrs = dict(group.attrs)
    except Exception:  # noqa: BLE001 - damaged attributes: describe the store from its path
        attrs = {}
    path = Path(store_path) if store_path is not None else (_store_root(group) or Path("<in-memory store>"))
    sid = slide_id or str(attrs.get("slide_id") or path.name.removesuffix(".zarr"))
    return path, sid, rebuild or rebuild_hint(path, attrs)


def require_array(group: zarr.Group, name: str, *, slide_id: str | None = None,
                  store_path: str | Path | None = None, rebuild: str | None = None) -> zarr.Array:
    """Array ``name`` of a finished store; its absence or unreadable metadata is damage."""
    try:
        arr = group[name]
    except Exception as err:  # noqa: BLE001 - KeyError, JSON errors, codec metadata errors: all damage
        path, sid, hint = _where(group, slide_id, store_path, rebuild)
        raise DamagedStoreError(path, sid, f"array '{name}' is missing or unreadable ({type(err).__name__}: {err})",
                                hint) from err
    if not isinstance(arr, zarr.Array):
        path, sid, hint = _where(group, slide_id, store_path, rebuild)
        raise DamagedStoreError(path, sid, f"'{name}' is not an array", hint)
    return arr


def has_integrity(arr: zarr.Array) -> bool:
    return isinstance(arr.attrs.get(INTEGRITY_ATTR), dict)


def read_array(group: zarr.Group, name: str, rows: slice | None = None, *, slide_id: str | None = None,
               store_path: str | Path | None = None, rebuild: str | None = None) -> np.ndarray:
    """Read ``group[name][rows]`` (default: all) after checking it is whole; else :class:`DamagedStoreError`.

    Checks: every chunk file needed exists (local stores), the chunks decode, the row count
    and the CRC-32 of every decoded row chunk match the integrity record. Whole row chunks are
    decoded (the checksum covers a chunk), then ``rows`` is cut from them.
    """
    arr = require_array(group, name, slide_id=slide_id, store_path=store_path, rebuild=rebuild)

    def damaged(problem: str) -> DamagedStoreError:
        path, sid, hint = _where(group, slide_id, store_path, rebuild)
        return DamagedStoreError(path, sid, f"array '{name}': {problem}", hint)

    if arr.ndim == 0:
        return np.asarray(arr[...])
    record = arr.attrs.get(INTEGRITY_ATTR)
    n = int(arr.shape[0])
    if isinstance(record, dict):
        if int(record.get("rows", -1)) != n or list(record.get("shape", arr.shape)) != list(arr.shape):
            raise damaged(f"shape {tuple(arr.shape)} but {tuple(record.get('shape', [record.get('rows')]))} "
                          "was written")
        if int(record.get("chunk_rows", -1)) != int(arr.chunks[0]):
            raise damaged("chunking differs from the one written")
    start, stop, step = (rows or slice(None)).indices(n)
    if step != 1:
        raise ValueError("read_array reads contiguous rows only")
    c = int(arr.chunks[0])
    first = start // c
    last = (stop - 1) // c + 1 if stop > start else first  # row chunks [first, last) hold rows [start, stop)
    _check_chunk_files(group, arr, range(first, last), record is not None, damaged)
    a, b = first * c, min(n, last * c)
    try:
        data = np.asarray(arr[a:b])
    except Exception as err:  # noqa: BLE001 - codec/IO errors of a damaged chunk (e.g. Zstd decompression error)
        raise damaged(f"a chunk of rows {a}-{b} cannot be decoded ({type(err).__name__}: {err})") from err
    if isinstance(record, dict):
        expected = list(record.get("chunks", []))
        got = _chunk_checksums(data, c)
        for i, crc in enumerate(got, start=first):
            if i >= len(expected) or int(expected[i]) != crc:
                raise damaged(f"rows {i * c}-{min(n, (i + 1) * c)} do not match their checksum (the chunk was "
                              "changed or replaced after the store was written)")
    return data[start - a: stop - a]


def _check_chunk_files(group: zarr.Group, arr: zarr.Array, row_chunks: range, sealed: bool, damaged) -> None:
    """Every chunk file of ``row_chunks`` exists (local stores only; others rely on the checksums).

    Legacy (unsealed) arrays: only float arrays are checked; an all-zero chunk of an integer
    array was never written (zarr skips chunks equal to the fill value), so a missing one is
    indistinguishable from it.
    """
    root = getattr(group.store, "root", None)
    if root is None or not (sealed or arr.dtype.kind == "f"):
        return
    folder = Path(root) / arr.path
    encode = arr.metadata.chunk_key_encoding.encode_chunk_key
    grid = arr.cdata_shape
    for i in row_chunks:
        for rest in itertools.product(*(range(k) for k in grid[1:])):
            key = encode((i, *rest))
            if not (folder / key).is_file():
                raise damaged(f"chunk file {arr.path}/{key} is missing (rows {i * arr.chunks[0]}-"
                              f"{min(arr.shape[0], (i + 1) * arr.chunks[0])})")


def open_store(path: str | Path) -> zarr.Group:
    """Open a finished store read-only, with an error that names the path.

    A missing path is ``FileNotFoundError``; a folder without a readable ``zarr.json`` is
    :class:`DamagedStoreError` (atomic writes never leave one, so something removed it).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such store; run the stage that makes it")
    if not (p / "zarr.json").is_file():
        raise UnfinishedStoreError(p, p.name.removesuffix(".zarr"), "no zarr.json (not a finished store, or its "
                                   "metadata was removed)", rebuild_hint(p))
    try:
        return zarr.open_group(str(p), mode="r", zarr_format=3)
    except Exception as err:  # noqa: BLE001 - invalid JSON, unknown format: damage
        raise DamagedStoreError(p, p.name.removesuffix(".zarr"),
                                f"zarr.json is unreadable ({type(err).__name__}: {err})", rebuild_hint(p)) from err


# ----------------------------------------------------------------------------- disk full


def is_disk_full(err: BaseException) -> bool:
    """True for a write that failed for lack of space, also when torch's zip writer reports it.

    ``torch.save`` on a full disk raises ``RuntimeError: [enforce fail at inline_container.cc:...]
    unexpected pos N vs M`` (or ``PytorchStreamWriter failed writing file``), with no errno.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        if isinstance(current, RuntimeError) and ("unexpected pos" in str(current)
                                                  or "PytorchStreamWriter failed writing" in str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def mount_point(path: str | Path) -> Path:
    """The mount point of the filesystem holding ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def disk_space_mb(path: str | Path) -> tuple[float, float]:
    """(free, total) megabytes of the filesystem holding ``path``; NaN when it cannot be asked."""
    try:
        usage = shutil.disk_usage(mount_point(path))
    except OSError:
        return float("nan"), float("nan")
    return usage.free / 1e6, usage.total / 1e6
