"""Encode the patches of one slide into a Zarr feature store (``features/{encoder}/{slide}.zarr``).

Reads the patch grid of the tiles store, reads patches with few OpenSlide calls in parallel
workers (:mod:`ghanet_pipeline.slides.patch_reader`), encodes them in batches
(:mod:`ghanet_pipeline.features.encoders`; ``torch.inference_mode``, channels_last, bf16 autocast on
CUDA) and streams ``features`` (N, D) to disk one row chunk at a time, so memory stays bounded
whatever N. The store is written to a temporary sibling and renamed into place only when
complete; a lock file ``{out}.lock`` (outside the store, ``fcntl.lockf``) keeps two processes
from writing the same store.

Precision: ``features.precision: auto`` computes in fp32 on CPU (reruns give bit-identical
features) and in bf16 autocast on CUDA; ``bf16`` on CPU is about 2x faster (features agree to
cosine > 0.9999) but is not bit-identical across machines. Features are stored as
``features.dtype`` (float16 by default).

A failed tiles store gives a failed features store (N = 0) with its reason. A patch region that
fails to decode fails the slide with its coordinates in the reason, or, with
``features.skip_bad_patches: true``, its row is dropped (from ``features`` and ``coords``) and
counted in ``n_bad_patches``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ghanet_pipeline import __version__
from ghanet_pipeline.config import FeatureSettings
from ghanet_pipeline.contracts.features import STORE_KIND, FeatureStoreAttrs
from ghanet_pipeline.contracts.tiles import TilesStoreAttrs
from ghanet_pipeline.features.encoder_names import spec_for
from ghanet_pipeline.io.layout import Layout
from ghanet_pipeline.io.store import (
    DamagedStoreError,
    atomic_path,
    create_group,
    create_row_array,
    json_safe,
    open_store,
    read_array,
    require_array,
    seal_array,
)
from ghanet_pipeline.runtime import locks
from ghanet_pipeline.runtime.devices import resolve_device

log = logging.getLogger(__name__)

CHUNK_ROWS = 1024  # rows per Zarr chunk of `features` and `coords`: the write unit
MAX_RECORDED_BAD = 1000  # bad patch coordinates kept in the attributes


class StoreLockedError(RuntimeError):
    """Another process is writing the same feature store."""


class FeatureError(RuntimeError):
    """The slide cannot be encoded (unreadable region, non-finite features...)."""


# ----------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class ShardItem:
    tiles: Path
    slide_path: Path
    out: Path


@dataclass(frozen=True)
class ShardResult:
    statuses: dict[str, str]  # out path -> ok | failed | kept | error | locked
    exit_code: int  # 0; 1 strict failure or a slide that crashed; 2 configuration; 3 a store was locked


def complete_store_reason(out: Path, tiles: Path, settings: FeatureSettings) -> str:
    """Why the feature store ``out`` must be (re)written, or "" when it is complete and current.

    Complete and current: a finished features store (status ok, or failed with a reason: a
    failure is a result too, as with one job per slide), of the configured encoder, weights,
    dtype and precision request, with whole ``coords`` (checksums) and a ``features`` array of
    ``n_patches`` rows, written after its tiles store (a tissue rerun makes it stale).
    """
    if not out.exists():
        return "missing"
    try:
        group = open_store(out)
        stored = FeatureStoreAttrs.from_attrs(dict(group.attrs), source=out)
        if not stored.finished:
            return f"unfinished (status {stored.status!r})"
        if (stored.encoder, stored.weights, stored.dtype) != (spec_for(settings.encoder).name, settings.weights,
                                                              settings.dtype):
            return "written with other encoder settings"
        n = stored.n_patches if stored.n_patches is not None else -1
        if stored.ok:
            if read_array(group, "coords", store_path=out).shape[0] != n:
                return "coords do not match n_patches"
            if require_array(group, "features", store_path=out).shape[0] != n:
                return "features do not match n_patches"
    except (DamagedStoreError, FileNotFoundError, KeyError, ValueError, TypeError) as err:
        return f"damaged ({err})"
    tiles_meta, out_meta = Layout.metadata_of(tiles), Layout.metadata_of(out)
    if tiles_meta.is_file() and tiles_meta.stat().st_mtime_ns > out_meta.stat().st_mtime_ns:
        return "older than its tiles store"
    return ""


def extract_shard(items: list[ShardItem], settings: FeatureSettings, strict: bool = False,
                  redo: set[Path] | frozenset = frozenset()) -> ShardResult:
    """Encode a shard of slides in one process with one encoder build (one CUDA context).

    Each slide keeps its own store, status and failure: a failed slide gets its failed store
    (or, strict, stops the shard), a slide that crashes (an unexpected error) or whose store is
    locked is logged and skipped, and the others go on; the exit code then says so. Stores that
    are complete and current (:func:`complete_store_reason`) are kept unless listed in ``redo``,
    so a rerun after a crash redoes only the unfinished slides.
    """
    encoder = None
    statuses: dict[str, str] = {}
    exit_code = 0
    redo = {p.resolve() for p in redo}
    for i, item in enumerate(items, 1):
        key = str(item.out)
        if item.out.resolve() not in redo and _keep_complete(item, settings, f"[{i}/{len(items)}]"):
            statuses[key] = "kept"
            continue
        if encoder is None and _needs_encoder(item):
            # One build for the shard, at the first slide that needs it (no weights are loaded
            # for a shard of complete or failing slides).
            try:
                encoder = build_configured_encoder(settings)
            except (FileNotFoundError, ValueError) as err:  # configuration: every slide would fail alike
                log.error("%s", err)
                statuses[key] = "error"
                return ShardResult(statuses, 2)
        statuses[key], slide_exit = _extract_in_shard(item, settings, strict, encoder)
        if slide_exit == 1 and statuses[key] == "failed":  # strict: the first failed slide stops the shard
            return ShardResult(statuses, 1)
        exit_code = max(exit_code, slide_exit)
    counts = {s: list(statuses.values()).count(s) for s in sorted(set(statuses.values()))}
    log.info("shard of %d slide(s) done: %s", len(items), counts)
    return ShardResult(statuses, exit_code)


def _keep_complete(item: ShardItem, settings: FeatureSettings, position: str) -> bool:
    reason = complete_store_reason(item.out, item.tiles, settings)
    if not reason:
        log.info("%s %s: complete, kept", position, item.out)
        return True
    log.info("%s %s: %s, encoding", position, item.out, reason)
    return False


def _needs_encoder(item: ShardItem) -> bool:
    """Whether this slide passes the input check, without building anything (a failing slide needs no encoder)."""
    try:
        tiles, tiles_attrs = read_tiles_store(item.tiles)
        return not _input_problem(tiles, tiles_attrs, item.tiles, item.slide_path)
    except Exception as err:  # noqa: BLE001 - a missing/damaged tiles store: extract() reports it
        log.debug("%s: input check: %s", item.out, err)
        return False


def _extract_in_shard(item: ShardItem, settings: FeatureSettings, strict: bool, encoder) -> tuple[str, int]:
    """One slide of a shard: its status and the exit code it asks for (its errors stay its own)."""
    try:
        status = extract(item.tiles, item.slide_path, item.out, settings, strict=strict, encoder=encoder)
    except StoreLockedError as err:
        log.error("%s", err)
        return "locked", 3
    except FeatureError as err:  # only raised in strict mode
        log.error("%s", err)
        return "failed", 1
    except Exception:  # noqa: BLE001 - one slide's crash must not lose the rest of the shard
        log.exception("%s: encoding failed; the other slides of the shard go on", item.out)
        return "error", 1
    return status, 1 if strict and status != "ok" else 0


# ----------------------------------------------------------------------------- lock


@contextlib.contextmanager
def exclusive_lock(out: Path) -> Iterator[Path]:
    """Hold ``{out}.lock`` (non-blocking exclusive lock, outside the store) while ``out`` is written.

    A ``locks.held`` lock: a POSIX record lock of this process only (forked reader workers do not
    inherit it), released the moment the process dies, even by SIGKILL.
    """
    lock = Layout.lock_of(out)
    try:
        fd = locks.acquire(lock)
    except locks.LockHeldError as err:
        raise StoreLockedError(
            f"{out} is being written by {err.holder} (lock file {lock}). "
            "Wait for it to finish; two jobs must not write the same store."
        ) from err
    try:
        yield lock
    finally:
        locks.release(lock, fd)


# ----------------------------------------------------------------------------- extraction


def configure_threads() -> int:
    """A fixed torch thread count: the job's share (OMP_NUM_THREADS, which Snakemake sets from
    the rule's threads), else every CPU this process may use. Same count, same results."""
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    requested = os.environ.get("OMP_NUM_THREADS", "")
    if requested.isdigit() and int(requested) > 0:
        cpus = min(cpus, int(requested))
    torch.set_num_threads(max(1, cpus))
    return torch.get_num_threads()


def build_configured_encoder(settings: FeatureSettings, device=None):
    """The encoder ``settings`` name, on its device, with the thread count fixed first."""
    from ghanet_pipeline.features.encoders import build_encoder
    from ghanet_pipeline.features.graph_cache import GraphCache

    device = device if device is not None else resolve_device(settings.device, "features.device")
    configure_threads()
    # lazy: the module is built only if the graph cache cannot serve its frozen CPU graph
    encoder = build_encoder(settings.encoder, settings.weights, settings.allow_download, lazy=True)
    return encoder.to(device, settings.precision, cpu_graph=settings.cpu_graph, graph_cache=GraphCache.default())


def read_tiles_store(tiles_path: Path) -> tuple[Any, TilesStoreAttrs]:
    """The open tiles store and its attributes (a store that is not a tiles store is a ContractError)."""
    tiles = open_store(tiles_path)
    return tiles, TilesStoreAttrs.from_attrs(dict(tiles.attrs), source=tiles_path)


def extract(
    tiles_path: Path, slide_path: Path, out: Path, settings: FeatureSettings, strict: bool = False, encoder=None
) -> str:
    """Write the feature store ``out`` for one slide; returns its status (``ok`` | ``failed``).

    ``encoder``: an already built :class:`~ghanet_pipeline.features.encoders.Encoder` (moved to its
    device) to reuse across slides; by default it is built from ``settings``.
    """
    with exclusive_lock(out):
        return _extract_locked(tiles_path, slide_path, out, settings, strict, encoder)


def _encoder_fields(encoder) -> dict[str, Any]:
    """What a store records about a built encoder."""
    return {
        "encoder": encoder.spec.name,
        "dim": int(encoder.dim),
        "weights": encoder.weights,
        "weights_sha256": encoder.weights_sha256,
        "precision": encoder.precision,
        "device": str(encoder.device),
    }


def _requested_encoder_fields(settings: FeatureSettings, device) -> dict[str, Any]:
    """What a failed store records about the encoder without building it (no weights loaded).

    ``dim`` comes from the registry spec; a generic timm / ``hf-hub:`` name has no spec dim and
    learning it means building the model, so it is recorded as 0 (the failed store's
    ``features`` is then (0, 0)). ``weights`` is the requested setting (``default``,
    ``random`` or a path) and ``weights_sha256`` is empty: nothing was loaded.
    """
    from ghanet_pipeline.features.encoders import resolve_precision

    spec = spec_for(settings.encoder)
    return {
        "encoder": spec.name,
        "dim": int(spec.dim or 0),
        "weights": settings.weights,
        "weights_sha256": "",
        "precision": resolve_precision(settings.precision, device),
        "device": str(device),
    }


def _new_store_attrs(tiles: TilesStoreAttrs, tiles_path: Path, encoder_fields: dict[str, Any],
                     settings: FeatureSettings) -> FeatureStoreAttrs:
    """The attributes of a store being written: the encoder's, and the patch layout of its tiles store."""
    return FeatureStoreAttrs(
        ghanet_store=STORE_KIND,
        status="incomplete",
        reason="",
        slide_id=tiles.slide_id,
        **encoder_fields,
        dtype=settings.dtype,
        patch_size=tiles.patch_size,
        patch_size_read=tiles.patch_size_read,
        patch_size_level0=tiles.patch_size_level0,
        read_level=tiles.read_level,
        target_mpp=tiles.target_mpp,
        effective_mpp=tiles.effective_mpp,
        tiles_store=str(tiles_path),
        slide_path=str(tiles.source_path),
        n_bad_patches=0,
        bad_patches=(),
        package_version=__version__,
    )


def _input_problem(tiles, tiles_attrs: TilesStoreAttrs, tiles_path: Path, slide_path: Path) -> str:
    """Why this slide cannot be encoded ("" if it can): checked before any encoder is built."""
    from ghanet_pipeline.slides.slide import SlideError, open_slide

    if not tiles_attrs.ok:
        return f"tiles stage failed: {tiles_attrs.reason or 'no reason recorded'}"
    # Checked here, before an encoder is built: a damaged tiles store (lost/truncated coords chunk, no
    # coords array) raises DamagedStoreError naming it; it is neither "no tissue" nor a wrong grid.
    if read_array(tiles, "coords", store_path=tiles_path).shape[0] == 0:
        return "the tiles store has no patches (no tissue found)"
    read_level = tiles_attrs.geometry(source=tiles_path).read_level
    try:
        with open_slide(slide_path) as slide:  # checks the file too (missing, empty, unreadable)
            level_count = slide.level_count
    except SlideError as err:
        return str(err)
    if read_level >= level_count:
        return (
            f"{slide_path}: read level {read_level} recorded in {tiles_path} does not exist "
            f"(the slide has {level_count}); rerun the tissue stage for {tiles_attrs.slide_id}"
        )
    return ""


def _extract_locked(
    tiles_path: Path, slide_path: Path, out: Path, settings: FeatureSettings, strict: bool, encoder=None
) -> str:
    t0 = time.perf_counter()
    tiles, tiles_attrs = read_tiles_store(tiles_path)
    # The device setting is checked for every slide (cheap; a bad one is a configuration error).
    device = encoder.device if encoder is not None else resolve_device(settings.device, "features.device")
    reason = _input_problem(tiles, tiles_attrs, tiles_path, slide_path)
    if reason:  # no encoder is built (no timm import, no weights loaded) for a slide that fails anyway
        fields = _encoder_fields(encoder) if encoder is not None else _requested_encoder_fields(settings, device)
        return _finish_failed(out, _new_store_attrs(tiles_attrs, tiles_path, fields, settings), reason, strict)

    if encoder is None:
        encoder = build_configured_encoder(settings, device)
    else:
        configure_threads()
    attrs = _new_store_attrs(tiles_attrs, tiles_path, _encoder_fields(encoder), settings)
    try:
        written = _write_store(tiles, tiles_path, slide_path, out, attrs, encoder, settings, t0)
    except FeatureError as err:
        return _finish_failed(out, attrs, str(err), strict)
    log.info("%s: %s, %d x %d features in %.1f s -> %s", written.slide_id, written.status, written.n_patches,
             written.dim, time.perf_counter() - t0, out)
    return written.status


def _write_store(tiles, tiles_path: Path, slide_path: Path, out: Path, attrs: FeatureStoreAttrs, encoder,
                 settings: FeatureSettings, t0: float) -> FeatureStoreAttrs:
    """Encode every patch into ``out`` (renamed into place when complete); returns the attributes written."""
    from ghanet_pipeline.slides.patch_reader import grid_from_store

    grid = grid_from_store(tiles, slide_path, tiles_path)
    n_batches = (len(grid) + settings.batch_size - 1) // settings.batch_size
    log.info(
        "%s: %d patches, %d batches of %d, encoder %s on %s (%s), %d reader workers", attrs.slide_id, len(grid),
        n_batches, settings.batch_size, settings.encoder, encoder.device, encoder.precision, settings.num_workers,
    )
    with atomic_path(out) as tmp:
        group = create_group(tmp, attrs.to_attrs())
        writer = RowWriter(group, len(grid), encoder.dim, np.dtype(settings.dtype))
        bad = _encode_patches(grid, encoder, writer, settings, slide_path, attrs.slide_id)
        writer.close()
        if bad:
            log.warning("%s: %d bad patch(es) dropped", attrs.slide_id, len(bad))
        written = attrs.replace(
            status="ok" if writer.n_written else "failed",
            reason="" if writer.n_written else "every patch failed to decode",
            n_patches=writer.n_written,
            n_bad_patches=len(bad),
            bad_patches=tuple(bad[:MAX_RECORDED_BAD]),
            seconds=round(time.perf_counter() - t0, 3),
            graph=encoder.graph,
        )
        group.attrs.update(json_safe(written.to_attrs()))
    return written


def _encode_patches(grid, encoder, writer: RowWriter, settings: FeatureSettings, slide_path: Path,
                    slide_id: str) -> list[tuple[int, int]]:
    """Stream the grid's patches through the encoder into ``writer``; returns the dropped patches' (x, y)."""
    from tqdm import tqdm

    from ghanet_pipeline.slides.patch_reader import iterate_batches

    bad: list[tuple[int, int]] = []
    n_batches = (len(grid) + settings.batch_size - 1) // settings.batch_size
    batches = iterate_batches(grid, settings.batch_size, settings.num_workers,
                              pin_memory=encoder.device.type == "cuda")
    dtype = np.dtype(settings.dtype)
    with contextlib.closing(batches), tqdm(
        total=len(grid), unit="patch", desc=slide_id, disable=None, file=sys.stderr
    ) as bar:
        for b, batch in enumerate(batches):
            if batch.errors:
                if not settings.skip_bad_patches:
                    raise FeatureError(_bad_patch_message(slide_path, batch.errors))
                for x, y, msg in batch.errors:
                    log.warning("%s: dropping patch at level-0 (x=%d, y=%d): %s", slide_id, x, y, msg)
                    bad.append((x, y))
            rows = encode_batch(encoder, batch, dtype, slide_path)
            writer.append(rows, grid.coords[batch.start : batch.start + len(batch.ok)][batch.ok])
            bar.update(len(batch.ok))
            log.debug("batch %d/%d done (%d rows)", b + 1, n_batches, writer.n_written + writer.n_buffered)
    return bad


def encode_batch(encoder, batch, dtype: np.dtype, slide_path: Path) -> np.ndarray:
    """Features of the readable rows of ``batch`` as ``dtype``; non-finite values are an error."""
    import torch

    feats = encoder(batch.patches)
    if not batch.ok.all():
        feats = feats[torch.from_numpy(batch.ok).to(feats.device)]
    rows = feats.cpu().numpy()
    if not np.isfinite(rows).all():
        raise FeatureError(f"{slide_path}: non-finite features in rows {batch.start}+ (encoder {encoder.spec.name})")
    rows = rows.astype(dtype)
    if not np.isfinite(rows).all():
        raise FeatureError(f"{slide_path}: features overflow {dtype.name}; set features.dtype: float32")
    return rows


def _bad_patch_message(slide_path: Path, errors: list[tuple[int, int, str]]) -> str:
    x, y, msg = errors[0]
    more = f" (and {len(errors) - 1} more in the same batch)" if len(errors) > 1 else ""
    return (
        f"{slide_path}: the region of the patch at level-0 (x={x}, y={y}) cannot be decoded{more}: {msg}. "
        "The slide file is damaged there; set features.skip_bad_patches: true to drop such patches"
    )


def _finish_failed(out: Path, attrs: FeatureStoreAttrs, reason: str, strict: bool) -> str:
    log.error("%s: %s", attrs.slide_id, reason)
    if strict:
        raise FeatureError(f"{attrs.slide_id}: {reason}")
    failed = attrs.replace(status="failed", reason=reason, n_patches=0)
    with atomic_path(out) as tmp:
        group = create_group(tmp, failed.to_attrs())
        group.create_array("features", shape=(0, failed.dim), dtype=failed.dtype, chunks=(1, max(1, failed.dim)))
        group.create_array("coords", shape=(0, 2), dtype="int64", chunks=(1, 2))
    return "failed"


class RowWriter:
    """Append rows to ``features`` / ``coords``, writing whole chunks: bounded memory, no rewrites."""

    def __init__(self, group, n_rows: int, dim: int, dtype: np.dtype, chunk_rows: int = CHUNK_ROWS):
        self.chunk_rows = max(1, min(chunk_rows, n_rows))
        # NaN fill + every chunk written: a chunk lost later can never read as features (store.read_array).
        self.features = create_row_array(group, "features", (n_rows, dim), dtype, self.chunk_rows)
        self.coords = create_row_array(group, "coords", (n_rows, 2), "int64", self.chunk_rows)
        self.dim = dim
        self.n_written = 0
        self._feats: list[np.ndarray] = []
        self._coords: list[np.ndarray] = []
        self.n_buffered = 0

    def append(self, feats: np.ndarray, coords: np.ndarray) -> None:
        if len(feats):
            self._feats.append(feats)
            self._coords.append(np.asarray(coords, dtype=np.int64))
            self.n_buffered += len(feats)
        while self.n_buffered >= self.chunk_rows:
            self._flush(self.chunk_rows)

    def _flush(self, rows: int) -> None:
        feats = np.concatenate(self._feats)
        coords = np.concatenate(self._coords)
        a, b = self.n_written, self.n_written + rows
        self.features[a:b] = feats[:rows]
        self.coords[a:b] = coords[:rows]
        self._feats = [feats[rows:]] if len(feats) > rows else []
        self._coords = [coords[rows:]] if len(coords) > rows else []
        self.n_written = b
        self.n_buffered -= rows

    def close(self) -> None:
        if self.n_buffered:
            self._flush(self.n_buffered)
        if self.n_written != self.features.shape[0]:  # dropped bad patches: shrink to what was written
            self.features.resize((self.n_written, self.dim))
            self.coords.resize((self.n_written, 2))
        seal_array(self.features)  # row count + per-chunk CRC-32 of what is on disk, checked by every reader
        seal_array(self.coords)
