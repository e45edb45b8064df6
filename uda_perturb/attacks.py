"""Attack objectives (registry ``ATTACKS``): losses that the perturbation *maximises*.

Each objective is a small module called as ``objective(ctx, features, logits) -> scalar`` where
``logits = classifier(features)`` at feature resolution. Register your own with ``register_attack``.
"""
from __future__ import annotations

import torch
from torch import nn

from .losses import SOURCE_LABEL, TARGET_LABEL, bce_to, entropy_loss, kl_div, seg_ce
from .models.discriminators import check_discriminator_input, discriminator_input
from .objective_context import ObjectiveContext
from .registry import ATTACKS


class AttackObjective(nn.Module):
    """Base class: subclasses implement ``forward(ctx, features, logits)`` returning a scalar to maximise."""

    needs_discriminator: bool = False

    def forward(self, ctx: ObjectiveContext, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@ATTACKS.register("classifier")
class ClassifierAttack(AttackObjective):
    """Cross-entropy of the classifier: with ``ctx.labels`` when given (source), else without labels.

    Without labels, ``target_mode="pseudo"`` uses the argmax of the clean prediction as label;
    ``target_mode="kl"`` maximises ``KL(p_clean || p(f))`` (VAT-style; needs ``random_start``, since its
    gradient at the clean features is zero).
    """

    def __init__(self, target_mode: str = "pseudo", pseudo_threshold: float = 0.0) -> None:
        super().__init__()
        if target_mode not in ("pseudo", "kl"):
            raise ValueError(f"target_mode must be 'pseudo' or 'kl', got {target_mode!r}")
        self.target_mode = target_mode
        self.pseudo_threshold = pseudo_threshold

    def forward(self, ctx: ObjectiveContext, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if ctx.labels is not None:
            return seg_ce(ctx.upsample(logits), ctx.labels, ctx.ignore_index)
        if self.target_mode == "kl":
            return kl_div(ctx.clean_at_pixels(), ctx.upsample(logits))
        return seg_ce(ctx.upsample(logits), ctx.pseudo_labels(self.pseudo_threshold), ctx.ignore_index)


@ATTACKS.register("entropy")
class EntropyAttack(AttackObjective):
    """Mean normalised entropy of the prediction: pushes every position towards uncertainty."""

    def forward(self, ctx: ObjectiveContext, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return entropy_loss(ctx.upsample(logits))


@ATTACKS.register("discriminator")
class DiscriminatorAttack(AttackObjective):
    """Maximise D's loss for the true domain: source moves towards target, target towards source."""

    needs_discriminator = True

    def forward(self, ctx: ObjectiveContext, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        assert ctx.discriminator is not None
        label = SOURCE_LABEL if ctx.domain == "source" else TARGET_LABEL
        if ctx.caller_discriminator_output is not None and logits is ctx.caller_logits:
            return bce_to(ctx.caller_discriminator_output, label)  # the caller's D forward on these very maps
        d_in = discriminator_input(ctx.discriminator_input, features, ctx.upsample(logits))
        check_discriminator_input(ctx.discriminator, ctx.discriminator_input, d_in, features, logits.shape[1])
        return bce_to(ctx.discriminator(d_in), label)


class PerturbationControl(AttackObjective):
    """Base of the gradient-free controls: they displace the features directly (no gradient pass), so that a
    run with a control in place of the attacks tells what the *adversarial* direction adds over any
    perturbation. ``displacement(features, radius, norm)`` returns ``f* - f``; the objective value is 0."""

    gradient_free = True

    def displacement(self, features: torch.Tensor, radius: torch.Tensor, norm: str) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, ctx: ObjectiveContext, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits.sum() * 0.0


@ATTACKS.register("random")
class RandomControl(PerturbationControl):
    """A uniformly random direction at each position with exactly the radius the attack would use there
    (L2: a random unit vector over channels times the radius; Linf: a random sign per channel times it)."""

    def displacement(self, features: torch.Tensor, radius: torch.Tensor, norm: str) -> torch.Tensor:
        d = torch.randn(features.shape, device=features.device, dtype=torch.float32)
        if norm == "linf":
            return d.sign() * radius
        return d / d.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius


@ATTACKS.register("dropout")
class DropoutControl(PerturbationControl):
    """Channel dropout of the features (UniMatch's feature perturbation): each channel of each image is zeroed
    with probability ``rate`` and the rest scaled by ``1 / (1 - rate)``; the radius does not apply."""

    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < rate < 1.0:
            raise ValueError(f"dropout rate must be in (0, 1), got {rate}")
        self.rate = rate

    def displacement(self, features: torch.Tensor, radius: torch.Tensor, norm: str) -> torch.Tensor:
        f = features.float()
        keep = (torch.rand((f.shape[0], f.shape[1], 1, 1), device=f.device) >= self.rate).float()
        return f * keep / (1.0 - self.rate) - f
