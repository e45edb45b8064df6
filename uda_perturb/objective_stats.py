"""What each attack objective did in one perturbation: its loss at the clean features and at ``f*`` (the rise is
the attack's effect on it), the step's cosine with its own direction, its share of the gradient norm, and the
cosine between the objectives' own directions.

Why the loss and not only the cosine: under ``balanced`` with equal weights the step's cosine with each of two
objectives' directions is ``sqrt((1 + c) / 2)`` for both, ``c`` being the cosine between the two directions:
equal by construction, it cannot tell whether the discriminator attack acted. Its loss at ``f*`` can: its rise
is 0 for an objective that did not act (``benchmarks/results/attack_turnover.md`` logs it over training).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .attack_combination import position_norm

NAN = float("nan")


@dataclass
class ObjectiveStats:
    """One attack objective in one perturbation (``nan`` where not measured).

    ``loss_clean`` / ``loss_perturbed``: the objective's unweighted value at the clean features and at ``f*``,
    both from logits of the same mode (the defense pass and its clean reference); :attr:`rise` is the attack's
    effect on it. ``step_cosine``: mean over moved positions of the cosine between the step and this objective's
    own direction. ``grad_share``: its weighted input gradient's mean per-position norm over the sum of all the
    objectives' (what a plain ``sum`` hears of it). The last two are means over the attack steps.
    """

    loss_clean: float = NAN
    loss_perturbed: float = NAN
    step_cosine: float = NAN
    grad_share: float = NAN

    @property
    def rise(self) -> float:
        """``loss_perturbed - loss_clean``: how much the attack raised this objective."""
        return self.loss_perturbed - self.loss_clean


class ObjectiveTracker:
    """Accumulates :class:`ObjectiveStats` and the pairwise direction cosines over the steps of one perturbation."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = unique_names(names)
        self.stats = {n: ObjectiveStats() for n in self.names}
        self._cos: list[list[float]] = [[] for _ in self.names]
        self._share: list[list[float]] = [[] for _ in self.names]
        self._pairs: dict[str, list[float]] = {}

    def record(self, units: Sequence[Optional[torch.Tensor]], norms: Sequence[Optional[torch.Tensor]],
               steps: Sequence[torch.Tensor], same_point: bool) -> None:
        """One attack step: each objective's unit gradient and per-position gradient norm (:func:`unit_l2` of its
        weighted term's gradient; ``None`` where not computed) and the step it took part in. Shares and pairwise
        cosines are recorded only when every objective's gradient was taken at the same point."""
        step_norms: dict[int, torch.Tensor] = {}  # a step shared by several objectives: its norm taken once
        for i, (u, n, step) in enumerate(zip(units, norms, steps)):
            if u is None or n is None:
                continue
            if id(step) not in step_norms:
                step_norms[id(step)] = position_norm(step)
            sn = step_norms[id(step)]
            both = (n > 0) & (sn > 0)
            cos = (u * step.float()).sum(dim=1, keepdim=True) / sn.clamp_min(torch.finfo(torch.float32).tiny)
            self._cos[i].append(float(cos[both].mean()) if bool(both.any()) else 0.0)
        if not same_point or any(u is None for u in units) or len(units) < 2:
            return
        means = [float(n.mean()) for n in norms if n is not None]
        total = sum(means) or 1.0
        for i, m in enumerate(means):
            self._share[i].append(m / total)
        for i in range(len(units)):
            for j in range(i + 1, len(units)):
                ui, uj, ni, nj = units[i], units[j], norms[i], norms[j]
                assert ui is not None and uj is not None and ni is not None and nj is not None
                both = (ni > 0) & (nj > 0)
                cos = (ui * uj).sum(dim=1, keepdim=True)
                key = f"{self.names[i]}|{self.names[j]}"
                self._pairs.setdefault(key, []).append(float(cos[both].mean()) if bool(both.any()) else 0.0)

    def set_losses(self, clean: Sequence[float], perturbed: Sequence[float]) -> None:
        """Each objective's unweighted value at the clean features and at ``f*``."""
        for name, c, p in zip(self.names, clean, perturbed):
            self.stats[name].loss_clean, self.stats[name].loss_perturbed = float(c), float(p)

    def result(self) -> tuple[dict[str, ObjectiveStats], dict[str, float]]:
        """``({objective: stats}, {"a|b": mean cosine between a's and b's own directions})``."""
        for i, name in enumerate(self.names):
            self.stats[name].step_cosine = _mean(self._cos[i])
            self.stats[name].grad_share = _mean(self._share[i])
        return self.stats, {k: _mean(v) for k, v in self._pairs.items()}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else NAN


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


def finite(x: float) -> bool:
    """Whether a statistic was measured (not ``nan``)."""
    return not math.isnan(x)
