"""What a perturbation returns: the perturbed features, the defense loss and its parts, and statistics of
what the attack did."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .attack_combination import position_norm
from .objective_stats import ObjectiveStats

_TINY = 1e-12


@dataclass
class PerturbStats:
    """Summary of one perturbation: per-position L2 norms of ``f* - f``, the share of positions moved, what each
    attack objective did (``objectives``: name -> :class:`~uda_perturb.objective_stats.ObjectiveStats`, its loss
    at the clean features and at ``f*`` first), and ``direction_cosine``: ``{"a|b": mean cosine between objective
    a's and b's own per-position directions}`` (1: they agree; near 0: unrelated; negative: they pull apart)."""

    mean_norm: float
    max_norm: float
    mean_relative_norm: float
    fraction_perturbed: float
    attack_loss_before: float
    attack_loss_after: Optional[float] = None
    objectives: dict[str, ObjectiveStats] = field(default_factory=dict)
    direction_cosine: dict[str, float] = field(default_factory=dict)


@dataclass
class PerturbResult:
    """What ``perturb_and_defend`` returns. ``loss`` trains the classifier (``perturbed`` is detached)."""

    perturbed: torch.Tensor
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    stats: PerturbStats
    adv_logits: torch.Tensor


def _summary(delta: torch.Tensor, f0_norm: torch.Tensor, moved: torch.Tensor, loss_before: float) -> PerturbStats:
    """Per-position norms of the displacement ``delta`` of features whose per-position norms are ``f0_norm``, and
    the share of positions ``moved`` (``attack_loss_after`` is set by the caller where it is measured)."""
    norms = position_norm(delta)
    rel = norms / (f0_norm + _TINY)
    return PerturbStats(float(norms.mean()), float(norms.max()), float(rel.mean()), float(moved.float().mean()),
                        loss_before)
