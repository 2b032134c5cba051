"""Baselines trained on the same data and loop as G-HANet.

- ``ABMIL``: gated-attention multiple-instance learning over the patch bag (slide only), as the
  MCAT benchmark's AMIL: Linear(D, 512) -> ReLU -> Dropout, gated attention, attention pooling,
  Linear(512, 256) -> ReLU -> Dropout, Linear(256, n_bins).
- ``SNN``: self-normalising MLP over *all* genomic columns (genomics only), as MCAT's SNN:
  blocks of Linear -> SELU -> AlphaDropout (two of 256 by default), then Linear(256, n_bins);
  weights drawn N(0, 1/fan_in), biases zero (the self-normalising initialisation).
- ``ghanet_norecon`` is ``GHANet`` trained with reconstruction weight 0 (see ``factory``).

Both return the same dict as G-HANet (``hazards``, ``S``, ``risk``, ``logits``); ABMIL also
returns ``morphology`` (N,) with ``return_attention=True`` (``association`` is None).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ghanet_pipeline.model.dropout import FastDropout
from ghanet_pipeline.model.ghanet import GatedAttention, as_bag, survival_outputs


class ABMIL(nn.Module):
    modality = "slide"

    def __init__(self, feature_dim: int, n_bins: int = 4, hidden: int = 512, dropout: float = 0.25) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), FastDropout(dropout))
        self.attention = GatedAttention(hidden, hidden // 2, dropout)
        self.rho = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.ReLU(), FastDropout(dropout))
        self.classifier = nn.Linear(hidden // 2, n_bins)

    def forward(self, features: torch.Tensor, return_attention: bool = False) -> dict:
        h = self.proj(as_bag(features))
        weights = self.attention(h).float().softmax(dim=0)
        pooled = weights.to(h.dtype) @ h
        out = survival_outputs(self.classifier(self.rho(pooled)))
        out["recon"] = []
        if return_attention:
            out["morphology"] = weights.detach()
            out["association"] = None
            out["association_logits"] = None
        return out


ACTIVATIONS = {"selu": nn.SELU, "elu": nn.ELU}


class SNN(nn.Module):
    modality = "genomics"

    def __init__(
        self,
        input_dim: int,
        n_bins: int = 4,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.25,
        activation: str = "selu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"SNN activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        dims = [int(input_dim), *[int(h) for h in hidden]]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), ACTIVATIONS[activation](), nn.AlphaDropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(dims[-1], n_bins)
        self._init_self_normalising()

    def _init_self_normalising(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(module.weight.shape[1]))
                nn.init.zeros_(module.bias)

    def forward(self, genomics: torch.Tensor, return_attention: bool = False) -> dict:
        x = genomics.reshape(-1) if genomics.dim() > 1 and genomics.shape[0] == 1 else genomics
        if x.dim() != 1:
            raise ValueError(f"SNN expects one patient's genomic vector, got shape {tuple(genomics.shape)}")
        out = survival_outputs(self.classifier(self.body(x.unsqueeze(0)))[0])
        out["recon"] = []
        if return_attention:
            out["morphology"] = None
            out["association"] = None
            out["association_logits"] = None
        return out
