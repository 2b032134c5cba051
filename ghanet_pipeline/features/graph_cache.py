"""Frozen CPU encoder graphs kept on disk, so that a features job need not build and trace its encoder.

Building EfficientNet-Lite0 (importing timm, which imports torchvision and ``torch._dynamo``),
loading its weights and tracing + freezing it costs ~3.5 s of a CPU features job's ~6 s fixed
cost; loading the frozen graph costs 0.02 s. The first job on a machine traces, checks the graph
against the eager module (``Encoder``) and saves it here; later jobs load it.

An entry is one file, ``<key>.pt`` (``torch.jit.save``, written to a temporary name and renamed,
so a reader never sees half a file; two jobs writing the same key write the same graph). The key
is a digest of everything the graph depends on (:func:`graph_identity`): the encoder, its weights'
sha256, the input shape, the torch and timm versions and the source of the module builders. The
entry stores that identity and the graph's output on a fixed probe input; a loaded graph is used
only when both match here, so a stale, damaged or foreign file is never trusted: it is reported
and replaced. A cache folder that cannot be written only costs the tracing again (a warning says
so).

Where: ``$GHANET_CACHE_DIR``, else ``$XDG_CACHE_HOME/ghanet``, else ``~/.cache/ghanet``; then
``encoder-graphs/``. Deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "GHANET_CACHE_DIR"
FORMAT = 1
META_NAME = "ghanet_graph.json"
PROBE_SEED = 0


def default_cache_root() -> Path:
    """``$GHANET_CACHE_DIR``, else ``$XDG_CACHE_HOME/ghanet``, else ``~/.cache/ghanet``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ghanet"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


BUILDER_SOURCES = ("encoders.py", "checkpoints.py")  # where the modules are built and their weights read


def _builder_source_digest() -> str:
    """The module builders' source: a change there (key mapping, truncation) changes every key."""
    digest = hashlib.sha256()
    for name in BUILDER_SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


def graph_identity(encoder: str, weights_sha256: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """What a frozen graph depends on. ``weights_sha256`` is "" for the seeded random weights."""
    return {
        "format": FORMAT,
        "encoder": encoder,
        "weights_sha256": weights_sha256 or "random",
        "input_shape": [int(v) for v in input_shape],  # (C, H, W), channels_last float32
        "torch": torch.__version__,
        "timm": _version("timm"),
        "builders": _builder_source_digest(),
    }


def probe_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    """A fixed input (seeded normal values, one row) whose output an entry records."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    x = torch.randn((1, *input_shape), generator=generator)
    return x.contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class GraphCache:
    """A folder of frozen encoder graphs (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def default(cls) -> "GraphCache":
        return cls(default_cache_root() / "encoder-graphs")

    def path(self, identity: dict[str, Any]) -> Path:
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{identity['encoder']}-{key}.pt"

    def load(self, identity: dict[str, Any], tolerance: float) -> torch.jit.ScriptModule | None:
        """The entry for ``identity`` if there is one and it is sound here, else None (said in the log)."""
        path = self.path(identity)
        if not path.is_file():
            return None
        try:
            extra = {META_NAME: ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            meta = json.loads(extra[META_NAME])
            if meta.get("identity") != identity:
                raise ValueError("it was written for another encoder, weights or version")
            with torch.inference_mode():
                out = module(probe_input(tuple(identity["input_shape"]))).float()
            expected = torch.tensor(meta["probe_output"], dtype=torch.float32)
            error = relative_error(out, expected)
            if not error <= tolerance:
                raise ValueError(f"its output on the probe input differs by {error:.2g} from the one it recorded")
        except Exception as err:  # noqa: BLE001 - any doubt about an entry means: build the encoder again
            log.warning("encoder graph cache: ignoring %s (%s: %s); tracing the encoder again and replacing it",
                        path, type(err).__name__, err)
            return None
        log.info("encoder %s: frozen CPU graph loaded from %s", identity["encoder"], path)
        return module

    def save(self, identity: dict[str, Any], module: torch.jit.ScriptModule) -> Path | None:
        """Write the entry for ``identity`` (atomically); None, with a warning, if the folder is not writable."""
        path = self.path(identity)
        try:
            with torch.inference_mode():
                probe = module(probe_input(tuple(identity["input_shape"]))).float()
            meta = {"identity": identity, "probe_output": probe.tolist()}
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # as a plain file would be, not mkstemp's owner-only mode
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save's deprecation notice
                    torch.jit.save(module, tmp, _extra_files={META_NAME: json.dumps(meta)})
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as err:
            log.warning("encoder graph cache: cannot write %s (%s); every job will trace the encoder again. "
                        "Set %s to a writable folder.", path, err, CACHE_ENV)
            return None
        log.info("encoder %s: frozen CPU graph saved to %s", identity["encoder"], path)
        return path


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of ``expected`` (at least 1)."""
    scale = max(float(expected.abs().max()), 1.0)
    return float((got - expected).abs().max()) / scale
