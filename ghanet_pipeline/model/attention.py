"""Attention blocks shared by G-HANet: multi-head attention that also returns its logits,
and the GEGLU feed-forward.

Inputs are unbatched: one patient per step, so queries are ``(T, dim)`` and the context
``(N, dim)``. The attention returns ``(output (T, dim), logits (heads, T, N))`` where the
logits are taken before the softmax (G-HANet's association map averages them over heads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Cross-attention (``context`` given) or self-attention (``context`` None).

    q/k/v projections have no bias; the output projection has one and is followed by dropout.
    """

    def __init__(self, dim: int = 512, heads: int = 4, head_dim: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.scale = 1.0 / math.sqrt(head_dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.heads, self.head_dim).transpose(0, 1)  # (h, L, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        source = x if context is None else context
        q = self._split(self.to_q(x))
        k = self._split(self.to_k(source))
        v = self._split(self.to_v(source))
        logits = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (h, T, N)
        weights = logits.softmax(dim=-1)
        out = torch.matmul(weights, v).transpose(0, 1).reshape(x.shape[0], -1)  # (T, h*d)
        return self.dropout(self.to_out(out)), logits


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
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
