"""What a perturbation returns: the perturbed features, the defense loss and its parts, and statistics of
what the attack did."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .attack_combination import ObjectiveStats, position_norm

_TINY = 1e-12


@dataclass
class PerturbStats:
    """Summary of one perturbation: per-position L2 norms of ``f* - f``, the share of positions moved, and,
    with several attack objectives, how each took part (``objectives``: name -> :class:`ObjectiveStats`)."""

    mean_norm: float
    max_norm: float
    mean_relative_norm: float
    fraction_perturbed: float
    attack_loss_before: float
    attack_loss_after: Optional[float] = None
    objectives: dict[str, ObjectiveStats] = field(default_factory=dict)


@dataclass
class PerturbResult:
    """What ``perturb_and_defend`` returns. ``loss`` trains the classifier (``perturbed`` is detached)."""

    perturbed: torch.Tensor
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    stats: PerturbStats
    adv_logits: torch.Tensor


def _summary(delta: torch.Tensor, f0: torch.Tensor, moved: torch.Tensor, loss_before: float,
             loss_after: Optional[float]) -> PerturbStats:
    """Per-position norms of the displacement ``delta`` of ``f0``, and the share of positions ``moved``."""
    norms = position_norm(delta)
    rel = norms / (position_norm(f0) + _TINY)
    return PerturbStats(float(norms.mean()), float(norms.max()), float(rel.mean()), float(moved.float().mean()),
                        loss_before, loss_after)
