"""A built encoder: the module, its device and precision, and what outputs record about it."""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ghanet_pipeline.features.encoder_types import RANDOM, EncoderSpec
from ghanet_pipeline.features.graph_cache import GraphCache, graph_identity, relative_error

log = logging.getLogger(__name__)

# Patches per forward pass on the CPU: the largest activation of a 256-px batch of 8 stays
# under glibc's 32 MiB mmap ceiling (runtime.memory), so its pages are reused, not faulted in
# again; measured no slower per patch than batches of 64. Results do not depend on it.
CPU_MICRO_BATCH = 8
# A frozen CPU graph is used only when it matches the eager module on the first batch to
# this share of the largest output magnitude (measured: 2e-6 for EfficientNet-Lite0).
GRAPH_TOLERANCE = 1e-4
EAGER, FROZEN = "eager", "frozen"
# Graphs of larger encoders (the ViT foundation models) are not cached: a copy of their weights in
# the user's cache folder per input shape costs more disk than the tracing it saves costs time.
MAX_CACHED_WEIGHT_BYTES = 512 << 20


@dataclass
class Encoder:
    """An encoder: the module plus everything an output must record about it.

    ``model`` is None when the module is built on first need by ``build`` (``build_encoder(...,
    lazy=True)``): a job whose frozen graph comes from the :class:`GraphCache` never builds it.
    """

    spec: EncoderSpec
    model: nn.Module | None
    dim: int
    weights: str  # "random", or where the weights came from
    weights_sha256: str  # "" for random weights
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None
    graph: str = EAGER  # how batches run: eager, or frozen (a traced TorchScript graph, CPU fp32)
    build: Callable[[], nn.Module] | None = field(default=None, repr=False)  # makes ``model`` when None
    _graph_pending: bool = field(default=False, init=False, repr=False)
    _frozen: torch.jit.ScriptModule | None = field(default=None, init=False, repr=False)
    _graph_cache: GraphCache | None = field(default=None, init=False, repr=False)

    def to(self, device: torch.device | str, precision: str = "auto", cpu_graph: bool = False,
           graph_cache: GraphCache | None = None) -> "Encoder":
        """Move to ``device`` (channels_last) and pick the autocast dtype for ``precision``.

        ``cpu_graph`` (CPU, fp32): trace the module on the first batch and freeze it (batch norm
        folded into the convolutions, convolution + activation fused by oneDNN), ~1.7x faster
        per patch; kept only when it matches the eager module on that batch (``GRAPH_TOLERANCE``).
        ``graph_cache``: load that graph from there when an entry fits, and save it there after
        tracing.
        """
        self.device = torch.device(device)
        precision = resolve_precision(precision, self.device)
        if self.model is not None:
            self.model = self.placed(self.model)
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.graph, self._frozen = EAGER, None
        self._graph_pending = cpu_graph and self.device.type == "cpu" and self.autocast_dtype is None
        self._graph_cache = graph_cache if self._graph_pending else None
        mean = torch.tensor(self.spec.mean, dtype=torch.float32, device=self.device) * 255.0
        std = torch.tensor(self.spec.std, dtype=torch.float32, device=self.device) * 255.0
        self._mean = mean.view(1, 3, 1, 1)
        self._std = std.view(1, 3, 1, 1)
        return self

    def module(self) -> nn.Module:
        """The eager module, built now if it was left to ``build``."""
        if self.model is None:
            if self.build is None:
                raise RuntimeError(f"encoder {self.spec.name}: no module and nothing to build it with")
            model = self.build()
            built_dim = int(getattr(model, "num_features", self.dim))
            if built_dim != self.dim:
                raise RuntimeError(f"encoder {self.spec.name}: the built module gives {built_dim}-d features, "
                                   f"its registry entry says {self.dim}")
            self.model = self.placed(model)
        return self.model

    def placed(self, model: nn.Module) -> nn.Module:
        """``model`` on this encoder's device, channels_last, in eval mode, without gradients."""
        model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype is torch.bfloat16 else "fp32"

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float (B, 3, h, w), channels_last, on the device."""
        x = patches.to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        if self.spec.fixed_input_size and x.shape[-1] != self.spec.input_size:
            size = (self.spec.input_size, self.spec.input_size)
            x = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cpu":
            return self.forward_normalised(self.preprocess(patches))
        step = CPU_MICRO_BATCH
        return torch.cat([self.forward_normalised(self.preprocess(patches[i : i + step]))
                          for i in range(0, len(patches), step)])

    @torch.inference_mode()
    def forward_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Encode an already normalised float batch (what the encoder-only benchmark times)."""
        if self._graph_pending:
            self._prepare_cpu_graph(x)
        if self._frozen is not None:
            return self._frozen(x).float()
        ctx = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.module()(x)
        return out.float()

    def _prepare_cpu_graph(self, example: torch.Tensor) -> None:
        """The frozen graph for ``example``'s shape: from the cache when an entry fits, else traced (and cached)."""
        self._graph_pending = False
        # a cache entry is keyed by the weights' digest: weights known only by name are never cached
        cache = self._graph_cache if (self.weights_sha256 or self.weights == RANDOM) else None
        identity = graph_identity(self.spec.name, self.weights_sha256, tuple(example.shape[1:]))
        frozen = cache.load(identity, GRAPH_TOLERANCE) if cache is not None else None
        if frozen is None:
            frozen = self._freeze_for_cpu(example)
            if frozen is not None and cache is not None and self._weight_bytes() <= MAX_CACHED_WEIGHT_BYTES:
                cache.save(identity, frozen)
        if frozen is not None:
            self._frozen, self.graph = frozen, FROZEN

    def _weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.module().state_dict().values())

    def _freeze_for_cpu(self, example: torch.Tensor) -> torch.jit.ScriptModule | None:
        """The module traced and frozen on ``example`` if it matches eager on it and on one row, else None."""
        model = self.module()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about Python-side branches
                frozen = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
            error = max(relative_error(frozen(sample).float(), model(sample).float())
                        for sample in (example, example[:1]))
        except Exception as err:  # noqa: BLE001 - any tracing failure means: run eagerly
            log.warning("encoder %s: no frozen CPU graph (%s: %s); running eagerly", self.spec.name,
                        type(err).__name__, err)
            return None
        if not error <= GRAPH_TOLERANCE:
            log.warning("encoder %s: the frozen CPU graph differs from the module by %.2g; running eagerly",
                        self.spec.name, error)
            return None
        log.info("encoder %s: frozen CPU graph (largest difference to eager %.1g of the output scale)",
                 self.spec.name, error)
        return frozen


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; ``fp32`` / ``bf16`` as given."""
    if precision == "auto":
        precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision
