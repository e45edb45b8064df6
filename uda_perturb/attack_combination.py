"""How several attack objectives make one step: each objective's own input gradient, its per-position direction,
and the combination rule.

Why a rule is needed: the objectives' input gradients differ in size by orders of magnitude, and which one is
larger changes as the discriminator trains. With an untrained or saturated D the classifier's gradient was
40-230x D's and a plain sum stepped in the classifier's direction alone (cosine 0.9998); in training it turned
round: APODA with ``sum`` on ``synthetic_demo`` gave D 0.01-0.04 of the gradient norm for its first 20
iterations, then 0.22-0.93, the step following whichever was larger (``benchmarks/results/attack_turnover.md``).
``balanced`` normalises each objective's direction before the weighted sum, so each counts by its weight,
whichever gradient is larger at the moment.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

COMBINE_MODES = ("balanced", "sum", "separate")
TINY = 1e-12  # added to a norm before dividing by it


def position_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over channels at each position, ``B x 1 x h x w`` (float32). On a channels-last tensor the norm
    kernel reduces contiguous memory; on a contiguous one (a strided reduction) it was several times slower than
    the square root of a channel sum on CPU, so that is taken there (equal up to rounding)."""
    x = x.float()
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return x.norm(dim=1, keepdim=True)
    return (x * x).sum(dim=1, keepdim=True).sqrt()


def unit_direction(g: torch.Tensor, norm: str, g_norm: Optional[torch.Tensor] = None,
                   in_place: bool = False) -> torch.Tensor:
    """``g`` divided by its norm over channels at each position (``l2``; ``g_norm``: that norm when already
    computed) or its sign (``linf``); zero where ``g`` is zero. ``in_place``: overwrite ``g`` (a temporary of the
    caller's), saving a feature-sized allocation."""
    if norm == "l2":
        size = (position_norm(g) if g_norm is None else g_norm) + TINY
        return g.div_(size) if in_place else g / size
    return g.sign_() if in_place else g.sign()


def objective_gradients(values: Sequence[torch.Tensor], f: torch.Tensor, scale: float,
                        keep_graph: bool = False) -> list[torch.Tensor]:
    """``d values[o] / d f`` for each objective (float32; zeros where an objective does not depend on ``f``).

    One backward through the shared graph per objective, the graph kept until the last (or after it too with
    ``keep_graph``: the caller's graph): on CPU this was faster than one vmapped backward of all objectives
    (``is_grads_batched``), see ``benchmarks/perturb_overhead.py``."""
    grads = []
    for i, v in enumerate(values):
        (g,) = torch.autograd.grad(v * scale, f, retain_graph=keep_graph or i < len(values) - 1, allow_unused=True)
        grads.append(torch.zeros_like(f, dtype=torch.float32) if g is None else g.float())
    return grads


def safe_norms(n: torch.Tensor) -> bool:
    """Whether every per-position norm lies in [1e-15, 1e19]: its squares far from float32's under- and overflow,
    so a gradient divided by it is its unit vector without scaling each position first."""
    return bool(((n >= 1e-15) & (n <= 1e19)).all())


def unit_l2(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, n)``: ``g``'s unit vector over channels at each position and its norm there (``B x 1 x h x w``),
    however small ``g``: a saturated discriminator's gradient can lie far below the 1e-12 that
    :func:`unit_direction` adds to the norm, and its squares below float32's range, so where any position's norm
    is outside [1e-15, 1e19] (or zero) each position is first scaled by its largest entry. Zero stays zero."""
    g = g.float()
    n = position_norm(g)
    if safe_norms(n):  # 3 passes instead of 6
        return g / n, n
    peak = torch.maximum(g.amax(dim=1, keepdim=True), g.amin(dim=1, keepdim=True).neg())  # |g|'s max, no |g| copy
    scaled = g / peak.clamp_min(torch.finfo(torch.float32).tiny)
    n = position_norm(scaled)
    return scaled.div_(n.clamp_min(1.0)), peak * n  # a non-zero position's norm is >= 1 after scaling


def balanced_l2(grads: Sequence[torch.Tensor], weights: Sequence[float],
                norms: Optional[Sequence[torch.Tensor]] = None) -> Optional[torch.Tensor]:
    """The L2 ``balanced`` sum ``sum_o w_o g_o / |g_o|`` without the unit vectors as tensors of their own (one pass
    per objective after its norm), where every norm is safe (:func:`safe_norms`); ``None`` otherwise, for
    :func:`unit_l2`'s scaled route. Equal to :func:`balanced_direction` of the :func:`unit_l2` units up to rounding.
    ``norms``: each gradient's :func:`position_norm` where already taken (:func:`unit_l2`'s, the same values)."""
    norms = [position_norm(g) for g in grads] if norms is None else norms
    if not all(safe_norms(n) for n in norms):
        return None
    out = grads[0].float() * (weights[0] / norms[0])
    for g, n, w in zip(grads[1:], norms[1:], weights[1:]):
        out.addcmul_(g.float(), w / n)
    return out


def balanced_direction(grads: Sequence[torch.Tensor], units: Sequence[torch.Tensor], weights: Sequence[float],
                       norm: str) -> torch.Tensor:
    """The ``balanced`` rule before its final normalisation: ``sum_o w_o * d_o``, where ``d_o`` is objective o's
    per-position direction: its L2 unit vector (``units``, from :func:`unit_l2`) or, for ``linf``, its sign."""
    parts = list(units) if norm == "l2" else [g.sign() for g in grads]
    out = parts[0] * weights[0]  # a new tensor: the parts are kept for the statistics
    for d, w in zip(parts[1:], weights[1:]):
        out.add_(d, alpha=w)  # in place: no feature-sized temporary per objective (weight 1: bit for bit out + d)
    return out
