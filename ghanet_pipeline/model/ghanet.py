"""G-HANet: the cross-modal associating branch (CAB) and the hyper-attention survival branch (HSB).

Described in ``docs/model.md`` (after Wang et al., arXiv 2403.10040). One patient per call:

    out = model(features)                         # features (N, D) or (1, N, D), N >= 1
    out["hazards"], out["S"], out["risk"], out["logits"], out["recon"]   # recon: list of (k_i,)
    out = model(features, return_attention=True)
    out["morphology"]   # E1 (N,): gated-attention softmax over patches
    out["association"]  # E2 (G, N): per token, softmax over its top max(1, floor(0.2 N)) patches
    out["association_logits"]  # M (G, N): round-2 cross-attention logits averaged over heads

``attention_mode``:

- ``clean`` (default): a distinct round-2 cross-attention; dropout after each attention's output
  projection and inside the gated-attention scorer; E2 keeps exactly k patches per token
  (ties at the k-th score broken by the lower patch index).
- ``faithful``: the authors' release, in train mode as in eval mode. The round-1 cross-attention
  module serves both rounds (its keys and values of the shared context are projected once);
  dropout on the attention probabilities of every multi-head attention and none after their
  output projections; no dropout in the gated-attention scorer; E2 keeps every patch whose
  score is >= the k-th largest of its row (tied patches all kept).

Both modes have the same state-dict keys as before these distinctions were made.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ghanet_pipeline.model.attention import FeedForward, MultiHeadAttention
from ghanet_pipeline.model.dropout import FastDropout

TOPK_FRACTION = 0.2


def topk_count(n: int, fraction: float = TOPK_FRACTION) -> int:
    """Patches kept per token: max(1, floor(fraction * n)), never more than n."""
    return min(n, max(1, int(fraction * n)))


def association_weights(m: torch.Tensor, fraction: float = TOPK_FRACTION, keep_ties: bool = False) -> torch.Tensor:
    """E2 from M (G, N): per row, softmax over the kept entries, zero elsewhere; no gradient.

    k = ``topk_count(N)``. ``keep_ties=False`` (``clean``) keeps exactly k entries per row; among
    entries tied with the k-th largest, the lower column index wins (a stable descending sort, so
    the choice never depends on the sorting kernel). ``keep_ties=True`` (``faithful``) keeps every
    entry >= the k-th largest value, so a row may keep more than k entries when scores tie
    (duplicated or blank patches), as the authors' release does.
    """
    m = m.detach().float()
    k = topk_count(m.shape[-1], fraction)
    values, index = torch.sort(m, dim=-1, descending=True, stable=True)
    weights = torch.zeros_like(m)
    kept = (values >= values[..., k - 1 : k]).sum(dim=-1) if keep_ties else None
    if kept is None or bool((kept == k).all()):
        return weights.scatter(-1, index[..., :k], values[..., :k].softmax(dim=-1))
    for row in range(m.shape[0]):  # a different number kept per row: G is small (6)
        n = int(kept[row])
        weights[row, index[row, :n]] = values[row, :n].softmax(dim=-1)
    return weights


class GatedAttention(nn.Module):
    """Gated attention scores: (tanh(Wa h) * sigmoid(Wb h)) -> Linear(hidden, 1); returns (N,).

    ``dropout > 0`` adds a Dropout after the tanh and after the sigmoid; ``dropout == 0`` builds
    the scorer without Dropout modules (G-HANet ``faithful``). The Linear layers keep their
    indices either way (``a.0``, ``b.0``), so the state-dict keys do not change.
    """

    def __init__(self, dim: int = 512, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__()

        def branch(activation: nn.Module) -> nn.Sequential:
            layers = [nn.Linear(dim, hidden), activation]
            return nn.Sequential(*layers, FastDropout(dropout)) if dropout > 0 else nn.Sequential(*layers)

        self.a = branch(nn.Tanh())
        self.b = branch(nn.Sigmoid())
        self.score = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.score(self.a(h) * self.b(h)).squeeze(-1)


def survival_outputs(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """hazards = sigmoid(logits); S = cumprod(1 - hazards); risk = -sum(S)."""
    hazards = torch.sigmoid(logits.float())
    survival = torch.cumprod(1.0 - hazards, dim=-1)
    return {"logits": logits, "hazards": hazards, "S": survival, "risk": -survival.sum(dim=-1)}


def as_bag(features: torch.Tensor) -> torch.Tensor:
    """Accept (N, D) or (1, N, D); refuse empty bags with a clear message."""
    if features.dim() == 3 and features.shape[0] == 1:
        features = features[0]
    if features.dim() != 2:
        raise ValueError(f"expected one bag of patch features (N, D), got shape {tuple(features.shape)}")
    if features.shape[0] == 0:
        raise ValueError("empty bag: the patient has no patches (its feature stores hold N = 0 rows)")
    return features


class GHANet(nn.Module):
    modality = "slide"

    def __init__(
        self,
        feature_dim: int,
        group_sizes: Sequence[int],
        n_bins: int = 4,
        hidden: int = 512,
        heads: int = 4,
        head_dim: int = 128,
        dropout: float = 0.25,
        attention_mode: str = "clean",
    ) -> None:
        super().__init__()
        if attention_mode not in ("clean", "faithful"):
            raise ValueError(f"attention_mode must be 'clean' or 'faithful', got {attention_mode!r}")
        if not group_sizes or any(int(k) < 1 for k in group_sizes):
            raise ValueError(f"every token group needs at least one target, got sizes {list(group_sizes)}")
        self.attention_mode = attention_mode
        faithful = attention_mode == "faithful"
        # faithful: dropout on attention probabilities (release); clean: after the output projection
        dropout_at = "probabilities" if faithful else "output"
        self.group_sizes = [int(k) for k in group_sizes]
        n_tokens = len(self.group_sizes)

        # --- cross-modal associating branch
        self.cab_proj = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), FastDropout(dropout))
        self.tokens = nn.Parameter(torch.randn(n_tokens, hidden))
        self.norm_context = nn.LayerNorm(hidden)  # LN_h, shared by both rounds
        self.norm_q1 = nn.LayerNorm(hidden)
        self.cross_attn_1 = MultiHeadAttention(hidden, heads, head_dim, dropout, dropout_at)
        self.norm_ff1 = nn.LayerNorm(hidden)
        self.ff1 = FeedForward(hidden, dropout=dropout)
        self.norm_q2 = nn.LayerNorm(hidden)
        # faithful: the release calls the round-1 module twice and leaves its round-2 one untrained
        self.cross_attn_2 = None if faithful else MultiHeadAttention(hidden, heads, head_dim, dropout, dropout_at)
        self.norm_ff2 = nn.LayerNorm(hidden)
        self.ff2 = FeedForward(hidden, dropout=dropout)
        self.norm_recon = nn.LayerNorm(hidden)
        self.recon_heads = nn.ModuleList(
            nn.Sequential(
                nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ELU(), FastDropout(dropout), nn.Linear(hidden, k)
            )
            for k in self.group_sizes
        )

        # --- hyper-attention survival branch
        self.hsb_proj = nn.Sequential(
            nn.Linear(feature_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(), FastDropout(dropout)
        )
        self.morphology = GatedAttention(hidden, hidden // 2, 0.0 if faithful else dropout)  # release: no dropout
        self.edge_mlp_1 = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU())
        self.edge_mlp_2 = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU())
        self.self_attn = MultiHeadAttention(hidden, heads, head_dim, dropout, dropout_at)
        self.norm_ff3 = nn.LayerNorm(hidden)
        self.ff3 = FeedForward(hidden, dropout=dropout)
        self.token_head = nn.Sequential(
            nn.Linear(hidden, hidden // 2), nn.LayerNorm(hidden // 2), nn.ReLU(), FastDropout(dropout)
        )
        self.classifier = nn.Linear(n_tokens * (hidden // 2), n_bins)

    @property
    def second_cross_attention(self) -> MultiHeadAttention:
        return self.cross_attn_2 if self.cross_attn_2 is not None else self.cross_attn_1

    def associate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CAB trunk: (reconstructed genomic embeddings R (G, hidden), association logits M (G, N))."""
        context = self.norm_context(h)
        r, _, kv = self.cross_attn_1.forward_kv(self.norm_q1(self.tokens), context)
        r = self.ff1(self.norm_ff1(r)) + r
        query = self.norm_q2(self.tokens + r)
        if self.cross_attn_2 is None:
            # faithful: same module, same context, so round 1's keys and values serve again
            # (bit-identical; saves two (N, hidden) x (hidden, hidden) products forward and backward)
            r, logits = self.cross_attn_1.attend(query, kv)
        else:
            r, logits = self.cross_attn_2(query, context)
        r = self.ff2(self.norm_ff2(r)) + r
        return self.norm_recon(r), logits.mean(dim=0)

    def forward(self, features: torch.Tensor, return_attention: bool = False) -> dict:
        x = as_bag(features)
        r, m = self.associate(self.cab_proj(x))
        recon = [head(r[i]) for i, head in enumerate(self.recon_heads)]

        hb = self.hsb_proj(x)
        e1 = self.morphology(hb).float().softmax(dim=0)  # (N,)
        e2 = association_weights(m, keep_ties=self.attention_mode == "faithful")  # (G, N), detached
        hyper = (e1.unsqueeze(0) + e2) / 2
        edges = hyper.to(hb.dtype) @ hb  # (G, hidden)
        y = self.edge_mlp_2(self.edge_mlp_1(edges))
        fused = (y + edges + r) / 2
        fused = self.self_attn(fused)[0] + fused
        fused = self.ff3(self.norm_ff3(fused)) + fused
        logits = self.classifier(self.token_head(fused).flatten())

        out = survival_outputs(logits)
        out["recon"] = recon
        if return_attention:
            out["morphology"] = e1.detach()
            out["association"] = e2
            out["association_logits"] = m.detach().float()
        return out
