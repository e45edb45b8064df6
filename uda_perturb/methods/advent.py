"""ADVENT (Vu et al., CVPR 2019): adversarial alignment of weighted self-information maps (AdvEnt),
optionally with direct entropy minimisation trained jointly (``minent_weights``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..losses import entropy_loss
from ..models.segmentor import Segmentor
from ..registry import METHODS
from .base import StepState, UDAMethod


def entropy_terms(method: UDAMethod, state: StepState, weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """MinEnt terms: ``weights[0]`` x mean entropy of the main target prediction (+ ``weights[1]`` x aux)."""
    assert state.target is not None and state.target_size is not None
    out = {}
    for i, (level, (_, logits)) in enumerate(method.levels(state.target, state.target_size).items()):
        if i < len(weights) and weights[i] > 0:
            out[f"ent_{level}"] = weights[i] * entropy_loss(logits)
    return out


@METHODS.register("advent")
class Advent(UDAMethod):
    """AdvEnt: D sees ``-P log P / log C``. ``minent_weights=(0.001, 0.0002)`` adds MinEnt in the same
    model (the published 45.5 "AdvEnt+MinEnt" is instead an ensemble of two separately trained models)."""

    discriminator_space = "entropy"

    def __init__(self, segmentor: Segmentor, addons: Sequence[nn.Module] = (), discriminator: str = "fc",
                 adv_weights: Sequence[float] = (0.001, 0.0002), ndf: int = 64, seg_aux_weight: float = 0.1,
                 minent_weights: Sequence[float] = (0.0, 0.0)) -> None:
        super().__init__(segmentor, addons, seg_aux_weight)
        self.add_discriminators(discriminator, adv_weights, ndf)
        self.minent_weights = tuple(minent_weights)

    def generator_losses(self, state: StepState) -> dict[str, torch.Tensor]:
        """Segmentation, adversarial (on entropy maps) and optional MinEnt terms."""
        return {**self.segmentation_loss(state), **self.adversarial_loss(state),
                **entropy_terms(self, state, self.minent_weights)}
