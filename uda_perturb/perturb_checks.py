"""What ``perturb_and_defend`` checks before it perturbs: the inputs' shapes and types, the domain, the label
values, and that each objective has what it needs."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .objective_spec import Term

DOMAINS = ("source", "target")


def check_inputs(features: torch.Tensor, labels: Optional[torch.Tensor], domain: str,
                 discriminator: Optional[nn.Module], attacks: list[Term], defenses: list[Term]) -> None:
    """Refuse what the perturbation cannot use, with one line naming the fix."""
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a B x C x h x w tensor, got {shape}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or Inf; refusing to perturb them")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if labels is not None:
        if labels.dim() != 3 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels must be B x H x W with B={features.shape[0]}, got {tuple(labels.shape)}")
        if labels.is_floating_point():
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    controls = [t.name for t in attacks if getattr(t.module, "gradient_free", False)]
    if controls and len(attacks) > 1:
        raise ValueError(f"control perturbation {controls[0]!r} replaces the attacks: use it alone, not with "
                         f"{[t.name for t in attacks if t.name not in controls]}")
    for t in attacks:
        if getattr(t.module, "needs_discriminator", False) and discriminator is None:
            raise ValueError(f"attack {t.name!r} needs a discriminator: pass discriminator=...")
    for t in defenses:
        if getattr(t.module, "needs_labels", False) and labels is None:
            raise ValueError(f"defense {t.name!r} needs labels (source data); use 'kl', 'entropy' or "
                             "'pseudo_ce' on target data")

def check_label_values(labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Refuse label values outside ``[0, num_classes)`` other than ``ignore_index``."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        vals = sorted(set(labels[bad].unique().tolist()))[:10]
        raise ValueError(f"labels hold values {vals} outside [0, {num_classes}) other than the ignore "
                         f"index {ignore_index}")
