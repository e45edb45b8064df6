"""APODA's default defense written out as its least tensor work, as an add-on: the floor that the speed benchmark
measures the packaged ``apoda`` against (``speed.py``'s ``apoda_by_hand`` row: AdaptSegNet plus this add-on).

What the default ``perturbation`` add-on computes at the main level, for a head with BatchNorm and dropout (the
comparison model): per side, the attack's own head forward at the clean features with running statistics and
no dropout, the classifier and discriminator objectives' input gradients (one backward each), each normalised
per position, their sum normalised and scaled to 0.1 of each position's norm; then the head in the caller's
mode on ``f*`` and the source CE / target KL, the target's clean reference a no-grad head forward with the
defense pass's dropout masks. No input checks, no statistics, no generality; the features' own layout.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..attack_combination import position_norm
from ..losses import SOURCE_LABEL, TARGET_LABEL, bce_to, kl_div, seg_ce, upsample
from ..methods.base import StepState, UDAMethod
from ..model_state import frozen_state, mode_sensitive, untracked_statistics

EPS, LAMBDA_SOURCE, LAMBDA_TARGET = 0.1, 1.0, 0.1  # the add-on's defaults


def _perturbed(head: nn.Module, d: nn.Module, f0: torch.Tensor, clean: torch.Tensor, labels: Optional[torch.Tensor],
               size: tuple[int, int], align: bool) -> torch.Tensor:
    """``f*``: one balanced L2 step of the classifier and discriminator objectives from the attack's own forward."""
    with frozen_state(head, d), torch.enable_grad():
        f = f0.detach().requires_grad_(True)
        logits = upsample(head(f), size, align)
        target = labels if labels is not None else upsample(clean.detach(), size, align).argmax(1)
        label = SOURCE_LABEL if labels is not None else TARGET_LABEL
        objectives = [seg_ce(logits, target), bce_to(d(logits.softmax(1)), label)]
        g1, g2 = (torch.autograd.grad(v, f, retain_graph=True)[0] for v in objectives)
    step = g1 / position_norm(g1) + g2 / position_norm(g2)
    return f0.detach() + step * (EPS * position_norm(f0.detach()) / position_norm(step))


class ByHandDefense(nn.Module):
    """The default ``perturbation`` add-on's main-level work written out (see the module docstring)."""

    needs_target = True

    def forward(self, method: UDAMethod, state: StepState) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        head, d, align = method.segmentor.classifier, method.discriminators["main"], method.align_corners
        if not mode_sensitive([head]):
            raise ValueError("the by-hand floor is written for a head with BatchNorm or dropout (the attack's own "
                             "forward); on other heads apoda's first step comes from the caller's graph")
        assert state.target is not None and state.target_size is not None
        fs = _perturbed(head, d, state.source.features, state.source.logits, state.labels, state.source_size, align)
        source = seg_ce(head(fs), state.labels, weight=method.class_weights, align_corners=align)
        ft = _perturbed(head, d, state.target.features, state.target.logits, None, state.target_size, align)
        before = torch.get_rng_state()
        adv = head(ft)
        after = torch.get_rng_state()
        torch.set_rng_state(before)  # the reference with the defense pass's dropout masks
        with torch.no_grad(), untracked_statistics(head):
            ref = head(state.target.features.detach())
        torch.set_rng_state(after)
        target = kl_div(upsample(ref, state.target_size, align), upsample(adv, state.target_size, align))
        return {"def_source": LAMBDA_SOURCE * source, "def_target": LAMBDA_TARGET * target}, {}
