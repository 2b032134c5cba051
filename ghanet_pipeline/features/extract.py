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
from typing import Iterator

import numpy as np

from ghanet_pipeline import __version__
from ghanet_pipeline.config import FeatureSettings
from ghanet_pipeline.io.store import (
    atomic_path,
    create_group,
    create_row_array,
    json_safe,
    open_store,
    read_array,
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


# ----------------------------------------------------------------------------- CLI


def _main_one(item: "ShardItem", settings: FeatureSettings, strict: bool) -> int:
    try:
        status = extract(item.tiles, item.slide_path, item.out, settings, strict=strict)
    except StoreLockedError as err:
        log.error("%s", err)
        return 3
    except FeatureError as err:  # only raised in strict mode
        log.error("%s", err)
        return 1
    except (FileNotFoundError, ValueError) as err:  # missing tiles store, weights offline, bad device/checkpoint
        log.error("%s", err)
        return 2
    return 0 if status == "ok" or not strict else 1


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
    from ghanet_pipeline.io.store import DamagedStoreError, require_array

    if not out.exists():
        return "missing"
    try:
        group = open_store(out)
        attrs = dict(group.attrs)
        if attrs.get("ghanet_store") != "features" or attrs.get("status") not in ("ok", "failed"):
            return f"unfinished (status {attrs.get('status')!r})"
        from ghanet_pipeline.features.encoders import spec_for

        if attrs.get("encoder") != spec_for(settings.encoder).name or attrs.get("weights") != settings.weights \
                or attrs.get("dtype") != settings.dtype:
            return "written with other encoder settings"
        n = int(attrs.get("n_patches", -1))
        if attrs["status"] == "ok":
            if read_array(group, "coords", store_path=out).shape[0] != n:
                return "coords do not match n_patches"
            if require_array(group, "features", store_path=out).shape[0] != n:
                return "features do not match n_patches"
    except (DamagedStoreError, FileNotFoundError, KeyError, ValueError, TypeError) as err:
        return f"damaged ({err})"
    tiles_meta, out_meta = tiles / "zarr.json", out / "zarr.json"
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
    from ghanet_pipeline.features.encoders import build_encoder

    encoder = None
    statuses: dict[str, str] = {}
    exit_code = 0
    redo = {p.resolve() for p in redo}
    for i, item in enumerate(items, 1):
        key = str(item.out)
        if item.out.resolve() not in redo:
            reason = complete_store_reason(item.out, item.tiles, settings)
            if not reason:
                log.info("[%d/%d] %s: complete, kept", i, len(items), item.out)
                statuses[key] = "kept"
                continue
            log.info("[%d/%d] %s: %s, encoding", i, len(items), item.out, reason)
        try:
            needs_encoder = encoder is None and not _shard_input_problem(item)
        except Exception as err:  # noqa: BLE001 - a missing/damaged tiles store: extract() reports it
            log.debug("%s: input check: %s", item.out, err)
            needs_encoder = False
        if needs_encoder:
            # One build for the shard, at the first slide that needs it (no weights are loaded
            # for a shard of complete or failing slides).
            try:
                device = resolve_device(settings.device, "features.device")
                configure_threads()
                encoder = build_encoder(settings.encoder, settings.weights, settings.allow_download)
                encoder = encoder.to(device, settings.precision)
            except (FileNotFoundError, ValueError) as err:  # configuration: every slide would fail alike
                log.error("%s", err)
                statuses[key] = "error"
                return ShardResult(statuses, 2)
        try:
            statuses[key] = extract(item.tiles, item.slide_path, item.out, settings, strict=strict, encoder=encoder)
        except StoreLockedError as err:
            log.error("%s", err)
            statuses[key], exit_code = "locked", max(exit_code, 3)
        except FeatureError as err:  # strict: the first failed slide stops the shard, as it stops the run
            log.error("%s", err)
            statuses[key] = "failed"
            return ShardResult(statuses, 1)
        except Exception:  # noqa: BLE001 - one slide's crash must not lose the rest of the shard
            log.exception("%s: encoding failed; the other slides of the shard go on", item.out)
            statuses[key], exit_code = "error", max(exit_code, 1)
        if strict and statuses[key] != "ok" and exit_code == 0:
            exit_code = 1
    counts = {s: list(statuses.values()).count(s) for s in sorted(set(statuses.values()))}
    log.info("shard of %d slide(s) done: %s", len(items), counts)
    return ShardResult(statuses, exit_code)


def _shard_input_problem(item: ShardItem) -> str:
    """The per-slide input check, without building anything (a failing slide needs no encoder)."""
    tiles = open_store(item.tiles)
    attrs = dict(tiles.attrs)
    return _input_problem(tiles, attrs, item.tiles, item.slide_path, attrs.get("slide_id", item.tiles.stem))


# ----------------------------------------------------------------------------- lock


@contextlib.contextmanager
def exclusive_lock(out: Path) -> Iterator[Path]:
    """Hold ``{out}.lock`` (non-blocking exclusive lock, outside the store) while ``out`` is written.

    A ``locks.held`` lock: a POSIX record lock of this process only (forked reader workers do not
    inherit it), released the moment the process dies, even by SIGKILL.
    """
    lock = out.with_name(out.name + ".lock")
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


def extract(
    tiles_path: Path, slide_path: Path, out: Path, settings: FeatureSettings, strict: bool = False, encoder=None
) -> str:
    """Write the feature store ``out`` for one slide; returns its status (``ok`` | ``failed``).

    ``encoder``: an already built :class:`~ghanet_pipeline.features.encoders.Encoder` (moved to its
    device) to reuse across slides; by default it is built from ``settings``.
    """
    with exclusive_lock(out):
        return _extract_locked(tiles_path, slide_path, out, settings, strict, encoder)


def _encoder_attrs(encoder) -> dict:
    """What a store records about a built encoder."""
    return {
        "encoder": encoder.spec.name,
        "dim": int(encoder.dim),
        "weights": encoder.weights,
        "weights_sha256": encoder.weights_sha256,
        "precision": encoder.precision,
        "device": str(encoder.device),
    }


def _requested_encoder_attrs(settings: FeatureSettings, device) -> dict:
    """What a failed store records about the encoder without building it (no weights loaded).

    ``dim`` comes from the registry spec; a generic timm / ``hf-hub:`` name has no spec dim and
    learning it means building the model, so it is recorded as 0 (the failed store's
    ``features`` is then (0, 0)). ``weights`` is the requested setting (``default``,
    ``random`` or a path) and ``weights_sha256`` is empty: nothing was loaded.
    """
    from ghanet_pipeline.features.encoders import resolve_precision, spec_for

    spec = spec_for(settings.encoder)
    return {
        "encoder": spec.name,
        "dim": int(spec.dim or 0),
        "weights": settings.weights,
        "weights_sha256": "",
        "precision": resolve_precision(settings.precision, device),
        "device": str(device),
    }


def _base_attrs(tiles_attrs: dict, tiles_path: Path, encoder_attrs: dict, settings: FeatureSettings) -> dict:
    return {
        "ghanet_store": "features",
        "status": "incomplete",
        "reason": "",
        "slide_id": tiles_attrs.get("slide_id", tiles_path.name.removesuffix(".zarr")),
        **encoder_attrs,
        "dtype": settings.dtype,
        "patch_size": tiles_attrs.get("patch_size"),
        "patch_size_read": tiles_attrs.get("patch_size_read"),
        "patch_size_level0": tiles_attrs.get("patch_size_level0"),
        "read_level": tiles_attrs.get("read_level"),
        "target_mpp": tiles_attrs.get("target_mpp"),
        "effective_mpp": tiles_attrs.get("effective_mpp"),
        "tiles_store": str(tiles_path),
        "slide_path": str(tiles_attrs.get("source_path", "")),
        "n_bad_patches": 0,
        "bad_patches": [],
        "package_version": __version__,
    }


def _input_problem(tiles, tiles_attrs: dict, tiles_path: Path, slide_path: Path, slide_id: str) -> str:
    """Why this slide cannot be encoded ("" if it can): checked before any encoder is built."""
    from ghanet_pipeline.slides.slide import SlideError, open_slide

    if tiles_attrs.get("status", "ok") != "ok":
        return f"tiles stage failed: {tiles_attrs.get('reason', '') or 'no reason recorded'}"
    # Checked here, before an encoder is built: a damaged tiles store (lost/truncated coords chunk, no
    # coords array) raises DamagedStoreError naming it; it is neither "no tissue" nor a wrong grid.
    if read_array(tiles, "coords", store_path=tiles_path).shape[0] == 0:
        return "the tiles store has no patches (no tissue found)"
    read_level = int(tiles_attrs["read_level"])
    try:
        with open_slide(slide_path) as slide:  # checks the file too (missing, empty, unreadable)
            level_count = slide.level_count
    except SlideError as err:
        return str(err)
    if read_level >= level_count:
        return (
            f"{slide_path}: read level {read_level} recorded in {tiles_path} does not exist "
            f"(the slide has {level_count}); rerun the tissue stage for {slide_id}"
        )
    return ""


def _extract_locked(
    tiles_path: Path, slide_path: Path, out: Path, settings: FeatureSettings, strict: bool, encoder=None
) -> str:
    t0 = time.perf_counter()
    tiles = open_store(tiles_path)
    tiles_attrs = dict(tiles.attrs)
    # The device setting is checked for every slide (cheap; a bad one is a configuration error).
    device = encoder.device if encoder is not None else resolve_device(settings.device, "features.device")
    slide_id = tiles_attrs.get("slide_id", tiles_path.name.removesuffix(".zarr"))
    reason = _input_problem(tiles, tiles_attrs, tiles_path, slide_path, slide_id)
    if reason:  # no encoder is built (no timm import, no weights loaded) for a slide that fails anyway
        enc_attrs = _encoder_attrs(encoder) if encoder is not None else _requested_encoder_attrs(settings, device)
        return _finish_failed(out, _base_attrs(tiles_attrs, tiles_path, enc_attrs, settings), reason, strict)

    configure_threads()
    if encoder is None:
        from ghanet_pipeline.features.encoders import build_encoder

        encoder = build_encoder(settings.encoder, settings.weights, settings.allow_download)
        encoder = encoder.to(device, settings.precision)
    attrs = _base_attrs(tiles_attrs, tiles_path, _encoder_attrs(encoder), settings)

    from ghanet_pipeline.slides.patch_reader import grid_from_store, iterate_batches

    grid = grid_from_store(tiles, slide_path)
    n, dim = len(grid), encoder.dim
    dtype = np.dtype(settings.dtype)
    n_batches = (n + settings.batch_size - 1) // settings.batch_size
    log.info(
        "%s: %d patches, %d batches of %d, encoder %s on %s (%s), %d reader workers",
        slide_id, n, n_batches, settings.batch_size, settings.encoder, device, encoder.precision, settings.num_workers,
    )
    try:
        with atomic_path(out) as tmp:
            group = create_group(tmp, attrs)
            writer = RowWriter(group, n, dim, dtype)
            bad: list[list[int]] = []
            batches = iterate_batches(
                grid, settings.batch_size, settings.num_workers, pin_memory=device.type == "cuda"
            )
            from tqdm import tqdm

            with contextlib.closing(batches), tqdm(
                total=n, unit="patch", desc=slide_id, disable=None, file=sys.stderr
            ) as bar:
                for b, batch in enumerate(batches):
                    if batch.errors:
                        if not settings.skip_bad_patches:
                            raise FeatureError(_bad_patch_message(slide_path, batch.errors))
                        for x, y, msg in batch.errors:
                            log.warning("%s: dropping patch at level-0 (x=%d, y=%d): %s", slide_id, x, y, msg)
                            bad.append([x, y])
                    rows = encode_batch(encoder, batch, dtype, slide_path)
                    writer.append(rows, grid.coords[batch.start : batch.start + len(batch.ok)][batch.ok])
                    bar.update(len(batch.ok))
                    log.debug("batch %d/%d done (%d rows)", b + 1, n_batches, writer.n_written + writer.n_buffered)
            writer.close()
            if bad:
                log.warning("%s: %d bad patch(es) dropped", slide_id, len(bad))
            group.attrs.update(
                json_safe(
                    {
                        "status": "ok",
                        "n_patches": writer.n_written,
                        "n_bad_patches": len(bad),
                        "bad_patches": bad[:MAX_RECORDED_BAD],
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                )
            )
            status = "ok"
            if writer.n_written == 0:
                status = "failed"
                group.attrs.update({"status": status, "reason": "every patch failed to decode"})
    except FeatureError as err:
        return _finish_failed(out, attrs, str(err), strict)
    log.info("%s: %s, %d x %d features in %.1f s -> %s", slide_id, status, writer.n_written, dim,
             time.perf_counter() - t0, out)
    return status


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


def _finish_failed(out: Path, attrs: dict, reason: str, strict: bool) -> str:
    log.error("%s: %s", attrs["slide_id"], reason)
    if strict:
        raise FeatureError(f"{attrs['slide_id']}: {reason}")
    with atomic_path(out) as tmp:
        group = create_group(tmp, {**attrs, "status": "failed", "reason": reason, "n_patches": 0})
        group.create_array("features", shape=(0, attrs["dim"]), dtype=attrs["dtype"], chunks=(1, max(1, attrs["dim"])))
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
