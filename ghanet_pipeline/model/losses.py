"""Training losses: discrete-time survival NLL and G-HANet's reconstruction loss."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-7


def nll_survival_loss(hazards: torch.Tensor, label_bin: int, censorship: float, eps: float = EPS) -> torch.Tensor:
    """Negative log-likelihood of a discrete-time survival model (alpha = 0).

    With S = cumprod(1 - h) and S_pad = [1, S_0, ..]: an event (censorship 0) in bin y costs
    -log S_pad[y] - log h[y]; a censored patient in bin y costs -log S_pad[y + 1].
    Probabilities are clamped at ``eps``.
    """
    hazards = hazards.float().reshape(-1)
    survival = torch.cumprod(1.0 - hazards, dim=0)
    s_pad = torch.cat([hazards.new_ones(1), survival])
    y = int(label_bin)
    c = float(censorship)
    uncensored = -(1.0 - c) * (torch.log(s_pad[y].clamp(min=eps)) + torch.log(hazards[y].clamp(min=eps)))
    censored = -c * torch.log(s_pad[y + 1].clamp(min=eps))
    return uncensored + censored


def reconstruction_loss(preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over families of (1 - cos(pred, target))^3 + MSE(pred, target)."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} reconstructed families but {len(targets)} target families")
    total = torch.zeros((), device=preds[0].device if preds else "cpu")
    for pred, target in zip(preds, targets):
        pred = pred.float().reshape(-1)
        target = target.float().reshape(-1).to(pred.device)
        if pred.shape != target.shape:
            raise ValueError(f"reconstruction of {pred.numel()} values against {target.numel()} targets")
        cos = F.cosine_similarity(pred, target, dim=0, eps=1e-8)
        total = total + (1.0 - cos) ** 3 + F.mse_loss(pred, target)
    return total
