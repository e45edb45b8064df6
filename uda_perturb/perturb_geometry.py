"""The per-position geometry of the perturbation: each position's radius, the projection onto its ball and a
random start inside it, for the L2 and Linf norms."""
from __future__ import annotations

from typing import Optional

import torch

from .attack_combination import position_norm

_TINY = 1e-12


def radius(f0: torch.Tensor, value: float, eps_mode: str, norm: str,
           f0_norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-position radius ``B x 1 x h x w`` (relative: ``value`` times the position's L2 norm, or its RMS for
    ``linf``), or a scalar tensor for absolute eps. ``f0_norm``: ``position_norm(f0)`` when already computed."""
    if eps_mode == "absolute":
        return torch.tensor(value, dtype=torch.float32, device=f0.device)
    scale = position_norm(f0) if f0_norm is None else f0_norm
    if norm == "linf":
        scale = scale / f0.shape[1] ** 0.5
    return value * scale


def project(delta: torch.Tensor, r: torch.Tensor, norm: str) -> torch.Tensor:
    """``delta`` projected, in place, onto each position's ball of radius ``r``."""
    if norm == "l2":
        n = position_norm(delta)
        return delta.mul_(torch.clamp(r / (n + _TINY), max=1.0))
    return delta.clamp_(min=-r, max=r)


def random_start(f0: torch.Tensor, r: torch.Tensor, norm: str) -> torch.Tensor:
    """A uniformly random point of each position's ball (L2: a random direction at a uniform fraction of r)."""
    if norm == "l2":
        d = torch.randn(f0.shape, device=f0.device, dtype=torch.float32)
        u = torch.rand((f0.shape[0], 1, *f0.shape[2:]), device=f0.device)
        return d / (position_norm(d) + _TINY) * r * u
    return (torch.rand(f0.shape, device=f0.device) * 2 - 1) * r


def advance(delta: torch.Tensor, direction: torch.Tensor, alpha: torch.Tensor, r: torch.Tensor, norm: str,
            keep_in_ball: bool) -> torch.Tensor:
    """One attack step: ``delta + alpha * direction``, projected onto each position's ball when ``keep_in_ball``;
    ``delta`` (the attack's own buffer) is updated in place: on CPU each fresh feature-sized tensor costs page
    faults (glibc hands large blocks back to the system when freed), more than the arithmetic on it."""
    delta.add_(alpha * direction)
    return project(delta, r, norm) if keep_in_ball else delta
