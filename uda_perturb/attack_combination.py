"""How several attack objectives make one step: each objective's own input gradient, its per-position direction,
the combination rule, and the per-objective statistics that show whether every objective acts.

Why a rule is needed: the classifier's input gradient is 40-230x the discriminator's on our models, so the
gradient of the *summed* losses is the classifier's direction alone (cosine 0.9998) and the discriminator
attack does nothing. ``balanced`` normalises each objective's direction before the weighted sum, so each
counts by its weight, not by its gradient's size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

COMBINE_MODES = ("balanced", "sum", "separate")
_TINY = 1e-12


def position_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over channels at each position, ``B x 1 x h x w`` (float32)."""
    return x.float().norm(dim=1, keepdim=True)


def unit_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """``g`` divided by its norm over channels at each position (``l2``) or its sign (``linf``); zero where ``g``
    is zero."""
    if norm == "l2":
        return g / (position_norm(g) + _TINY)
    return g.sign()


def objective_gradients(values: Sequence[torch.Tensor], f: torch.Tensor, scale: float) -> list[torch.Tensor]:
    """``d values[o] / d f`` for each objective (float32; zeros where an objective does not depend on ``f``).

    One backward through the shared graph per objective, the graph kept until the last: on CPU this was faster
    than one vmapped backward of all objectives (``is_grads_batched``), see ``benchmarks/perturb_overhead.py``."""
    grads = []
    for i, v in enumerate(values):
        (g,) = torch.autograd.grad(v * scale, f, retain_graph=i < len(values) - 1, allow_unused=True)
        grads.append(torch.zeros_like(f, dtype=torch.float32) if g is None else g.float())
    return grads


def unit_l2(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, n)``: ``g``'s unit vector over channels at each position and its norm there (``B x 1 x h x w``),
    however small ``g``: a saturated discriminator's gradient can lie far below the 1e-12 that
    :func:`unit_direction` adds to the norm, and its squares below float32's range, so each position is first
    scaled by its largest entry. Zero stays zero."""
    g = g.float()
    peak = g.abs().amax(dim=1, keepdim=True)
    scaled = g / peak.clamp_min(torch.finfo(torch.float32).tiny)
    n = position_norm(scaled)
    return scaled / n.clamp_min(1.0), peak * n  # a non-zero position's norm is >= 1 after scaling


def balanced_direction(grads: Sequence[torch.Tensor], units: Sequence[torch.Tensor], weights: Sequence[float],
                       norm: str) -> torch.Tensor:
    """The ``balanced`` rule before its final normalisation: ``sum_o w_o * d_o``, where ``d_o`` is objective o's
    per-position direction: its L2 unit vector (``units``, from :func:`unit_l2`) or, for ``linf``, its sign."""
    parts = list(units) if norm == "l2" else [g.sign() for g in grads]
    out = weights[0] * parts[0]
    for d, w in zip(parts[1:], weights[1:]):
        out = out + w * d
    return out


@dataclass
class ObjectiveStats:
    """How one attack objective took part in the step.

    ``step_cosine``: mean over moved positions of the cosine between the step and this objective's own input
    gradient (1: the step is its direction; near 0: it is ignored). ``grad_norm_ratio``: the mean per-position
    norm of its weighted term's input gradient divided by the largest objective's (1 for the largest; how much a
    plain ``sum`` would hear it).
    Both are averaged over the attack steps.
    """

    step_cosine: float
    grad_norm_ratio: float


class ObjectiveTracker:
    """Accumulates :class:`ObjectiveStats` over the steps of one perturbation."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = unique_names(names)
        self._cos = [0.0] * len(names)
        self._norm = [0.0] * len(names)
        self._steps = 0

    def record(self, units: Sequence[torch.Tensor], norms: Sequence[torch.Tensor],
               steps: Sequence[torch.Tensor]) -> None:
        """One attack step: each objective's unit gradient and gradient norm (:func:`unit_l2` of its weighted
        term's gradient) and the step direction it took part in."""
        means = []
        for i, (u, n, step) in enumerate(zip(units, norms, steps)):
            sn = position_norm(step)
            both = (n > 0) & (sn > 0)
            cos = (u * step.float()).sum(dim=1, keepdim=True) / sn.clamp_min(torch.finfo(torch.float32).tiny)
            self._cos[i] += float(cos[both].mean()) if bool(both.any()) else 0.0
            means.append(float(n.mean()))
        top = max(means) if max(means) > 0 else 1.0
        for i, m in enumerate(means):
            self._norm[i] += m / top
        self._steps += 1

    def result(self) -> dict[str, ObjectiveStats]:
        k = max(self._steps, 1)
        return {n: ObjectiveStats(c / k, r / k) for n, c, r in zip(self.names, self._cos, self._norm)}


def unique_names(names: Sequence[str]) -> list[str]:
    """Objective names, a repeated one numbered (``classifier``, ``classifier_2``)."""
    out: list[str] = []
    for n in names:
        name, k = n, 1
        while name in out:
            k += 1
            name = f"{n}_{k}"
        out.append(name)
    return out
