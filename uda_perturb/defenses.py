"""Defense losses (registry ``DEFENSES``): what the classifier *minimises* on perturbed features.

Each is called as ``defense(ctx, adv_logits) -> scalar``; ``adv_logits = classifier(perturbed)``.
"""
from __future__ import annotations

import torch
from torch import nn

from .losses import entropy_loss, kl_div, pixel_weighted_ce, seg_ce
from .objective_context import ObjectiveContext
from .registry import DEFENSES


class DefenseLoss(nn.Module):
    """Base class: subclasses implement ``forward(ctx, adv_logits)`` returning a scalar to minimise.
    ``reads_clean``: whether it compares with the clean prediction (``ctx.clean_logits``); on a head with BatchNorm
    or dropout that costs a reference forward in the defense pass's mode, skipped where no defense reads it (and no
    statistic asks for it). True unless a subclass says otherwise."""

    needs_labels: bool = False
    reads_clean: bool = True

    def forward(self, ctx: ObjectiveContext, adv_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@DEFENSES.register("ce")
class CrossEntropyDefense(DefenseLoss):
    """``CE(F(f*), y)`` with the labels (source, or self-training's mixed labels), class-weighted when
    ``ctx.class_weights`` is set; with ``ctx.pixel_weights`` it is the pixel-weighted loss of self-training
    (:func:`~uda_perturb.losses.pixel_weighted_ce`), so the defense weighs pseudo-labels as the method does."""

    needs_labels, reads_clean = True, False

    def forward(self, ctx: ObjectiveContext, adv_logits: torch.Tensor) -> torch.Tensor:
        assert ctx.labels is not None
        if ctx.pixel_weights is not None:
            return pixel_weighted_ce(ctx.upsample(adv_logits), ctx.labels, ctx.pixel_weights, ctx.ignore_index,
                                     ctx.class_weights)
        return seg_ce(ctx.upsample(adv_logits), ctx.labels, ctx.ignore_index, weight=ctx.class_weights)


@DEFENSES.register("kl")
class KLDefense(DefenseLoss):
    """``KL(p(f) detached || p(f*))``: the perturbed prediction must match the clean one."""

    def forward(self, ctx: ObjectiveContext, adv_logits: torch.Tensor) -> torch.Tensor:
        return kl_div(ctx.clean_at_pixels(), ctx.upsample(adv_logits))


@DEFENSES.register("entropy")
class EntropyDefense(DefenseLoss):
    """Mean normalised entropy of ``softmax(F(f*))``."""

    reads_clean = False

    def forward(self, ctx: ObjectiveContext, adv_logits: torch.Tensor) -> torch.Tensor:
        return entropy_loss(ctx.upsample(adv_logits))


@DEFENSES.register("pseudo_ce")
class PseudoLabelDefense(DefenseLoss):
    """``CE(F(f*), argmax p(f))`` on positions whose clean confidence reaches ``threshold``."""

    def __init__(self, threshold: float = 0.9) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, ctx: ObjectiveContext, adv_logits: torch.Tensor) -> torch.Tensor:
        return seg_ce(ctx.upsample(adv_logits), ctx.pseudo_labels(self.threshold), ctx.ignore_index)
