"""What ``perturb_and_defend`` checks before it perturbs: the inputs' shapes and types, the domain, the label
values, and that each objective has what it needs."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from .objective_spec import Term

DOMAINS = ("source", "target")


def check_inputs(features: torch.Tensor, labels: Optional[torch.Tensor], domain: str,
                 discriminator: Optional[nn.Module], attacks: list[Term], defenses: list[Term],
                 clean_logits: Optional[torch.Tensor], output_size: Optional[tuple[int, int]],
                 discriminator_space: Any, upsampled: bool) -> Optional[torch.Tensor]:
    """Refuse what the perturbation cannot use, with one line naming the fix. Returns the labels as integers
    (float labels holding whole numbers, as the references' loaders give them, are converted)."""
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a B x C x h x w tensor, got {shape}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    # the sum is finite unless an entry is NaN or Inf (or the sum overflows: then the exact check decides); one
    # reduction instead of isfinite's mask and its feature-sized allocation
    if not bool(torch.isfinite(features.sum())) and not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or Inf; refusing to perturb them")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if labels is not None:
        if labels.dim() != 3 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels must be B x H x W with B={features.shape[0]}, got {tuple(labels.shape)}")
        if labels.is_floating_point():
            whole = torch.isfinite(labels) & (labels == labels.round())
            if not bool(whole.all()):
                raise TypeError(f"labels must hold whole class ids; got {labels.dtype} values such as "
                                f"{float(labels[~whole][0])}")
            labels = labels.long()
    controls = [t.name for t in attacks if getattr(t.module, "gradient_free", False)]
    if controls and len(attacks) > 1:
        raise ValueError(f"control perturbation {controls[0]!r} replaces the attacks: use it alone, not with "
                         f"{[t.name for t in attacks if t.name not in controls]}")
    for t in attacks:
        if getattr(t.module, "needs_discriminator", False) and discriminator is None:
            raise ValueError(f"attack {t.name!r} needs a discriminator: pass discriminator=...")
    for t in defenses:
        if getattr(t.module, "needs_labels", False) and labels is None:
            if domain == "source":  # most likely the domain was forgotten, not the defense
                raise ValueError(f"defense {t.name!r} needs labels and none were given: for unlabelled target "
                                 "features pass domain='target' (its default defense is 'kl'); for source features "
                                 "pass labels=...")
            raise ValueError(f"defense {t.name!r} needs labels; on unlabelled target features use 'kl', 'entropy' "
                             "or 'pseudo_ce'")
    d_attack = any(getattr(t.module, "needs_discriminator", False) for t in attacks)
    at_features = clean_logits is None or tuple(clean_logits.shape[-2:]) == tuple(features.shape[-2:])
    if (d_attack and labels is None and output_size is None and discriminator_space != "features" and at_features
            and not upsampled):
        raise ValueError("a discriminator attack without labels needs output_size=(H, W): the image size the "
                         "discriminator judges (or clean_logits already at that size, or upsample= your own "
                         "upsampler); without it D would see feature-resolution maps")
    return labels


def logits_of(classifier: Callable[[torch.Tensor], Any], features: torch.Tensor) -> torch.Tensor:
    """``classifier(features)``, refused unless it is one logits tensor."""
    out = classifier(features)
    if not isinstance(out, torch.Tensor):
        pick = "[0] or [1]" if isinstance(out, (tuple, list)) else "['out']" if isinstance(out, dict) else ""
        hint = f", e.g. lambda f: classifier(f){pick}" if pick else ""
        raise TypeError(f"the classifier returned a {type(out).__name__}, not a logits tensor: pass a callable "
                        f"from features to one B x K x h x w tensor{hint}")
    return out


def check_label_values(labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Refuse label values outside ``[0, num_classes)`` other than ``ignore_index``."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        vals = sorted(set(labels[bad].unique().tolist()))[:10]
        raise ValueError(f"labels hold values {vals} outside [0, {num_classes}) other than the ignore "
                         f"index {ignore_index}")
