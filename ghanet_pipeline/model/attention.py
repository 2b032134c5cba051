"""Attention blocks shared by G-HANet: multi-head attention that also returns its logits,
and the GEGLU feed-forward. The model is described in ``docs/model.md``.

Inputs are unbatched: one patient per step, so queries are ``(T, dim)`` and the context
``(N, dim)``. The attention returns ``(output (T, dim), logits (heads, T, N))`` where the
logits are taken before the softmax (G-HANet's association map averages them over heads).

Where the dropout sits is a constructor choice (``dropout_at``), because the two attention
modes of G-HANet differ there:

- ``"output"`` (``clean``): dropout after the output projection, as the paper's figure reads;
- ``"probabilities"`` (``faithful``): dropout on the attention probabilities, after the softmax
  and before the values are weighted, and none after the output projection, as the authors'
  release does.

Neither holds parameters, so both modes share one state-dict layout.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ghanet_pipeline.model.dropout import FastDropout

DROPOUT_PLACES = ("output", "probabilities")


class KeyValue(NamedTuple):
    """Keys and values of one context, split by head: each ``(heads, N, head_dim)``."""

    keys: torch.Tensor
    values: torch.Tensor


class MultiHeadAttention(nn.Module):
    """Cross-attention (``context`` given) or self-attention (``context`` None).

    q/k/v projections have no bias; the output projection has one. With ``dropout_at="output"``
    the children are ``to_q, to_k, to_v, to_out, dropout`` (dropout after ``to_out``); with
    ``"probabilities"`` they are ``to_q, to_k, to_v, to_out, attn_dropout`` (dropout on the
    softmax, nothing after ``to_out``).

    ``forward_kv`` also returns the projected keys/values and ``attend`` takes them, so that a
    caller attending twice to one context with one module (G-HANet ``faithful``) projects the
    context once.
    """

    def __init__(
        self, dim: int = 512, heads: int = 4, head_dim: int = 128, dropout: float = 0.25, dropout_at: str = "output"
    ) -> None:
        super().__init__()
        if dropout_at not in DROPOUT_PLACES:
            raise ValueError(f"dropout_at must be one of {DROPOUT_PLACES}, got {dropout_at!r}")
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.dropout_at = dropout_at
        self.scale = 1.0 / math.sqrt(head_dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        # Registered under different names so that the module list says where dropout acts.
        if dropout_at == "output":
            self.dropout = FastDropout(dropout)
        else:
            self.attn_dropout = FastDropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.heads, self.head_dim).transpose(0, 1)  # (h, L, d)

    def project_context(self, context: torch.Tensor) -> KeyValue:
        """Keys and values of ``context`` (N, dim); reusable across calls of ``attend``."""
        return KeyValue(self._split(self.to_k(context)), self._split(self.to_v(context)))

    def attend(self, x: torch.Tensor, kv: KeyValue) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries from ``x`` (T, dim) against projected keys/values: (output (T, dim), logits (h, T, N))."""
        return self._attend(self._split(self.to_q(x)), kv, x.shape[0])

    def forward_kv(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, KeyValue]:
        """``forward`` that also returns the keys/values it projected, for a later ``attend``."""
        q = self._split(self.to_q(x))  # q before k/v: autograd then sums gradients in the historical order
        kv = self.project_context(x if context is None else context)
        out, logits = self._attend(q, kv, x.shape[0])
        return out, logits, kv

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out, logits, _ = self.forward_kv(x, context)
        return out, logits

    def _attend(self, q: torch.Tensor, kv: KeyValue, n_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.matmul(q, kv.keys.transpose(-1, -2)) * self.scale  # (h, T, N)
        weights = logits.softmax(dim=-1)
        if self.dropout_at == "probabilities":
            weights = self.attn_dropout(weights)
        out = torch.matmul(weights, kv.values).transpose(0, 1).reshape(n_queries, -1)  # (T, h*d)
        out = self.to_out(out)
        if self.dropout_at == "output":
            out = self.dropout(out)
        return out, logits


class GEGLU(nn.Module):
    """Split the last dimension in halves a, b and return a * gelu(b)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return a * F.gelu(b)


class FeedForward(nn.Module):
    """Linear(dim, 8*dim) -> GEGLU -> Linear(4*dim, dim) -> dropout (512 -> 4096 -> 2048 -> 512)."""

    def __init__(self, dim: int = 512, mult: int = 4, dropout: float = 0.25) -> None:
        super().__init__()
        hidden = dim * mult
        self.net = nn.Sequential(
            nn.Linear(dim, hidden * 2),
            GEGLU(),
            nn.Linear(hidden, dim),
            FastDropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
