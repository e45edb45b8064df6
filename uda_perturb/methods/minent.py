"""MinEnt (ADVENT paper): direct minimisation of the target prediction's entropy."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..models.segmentor import Segmentor
from ..registry import METHODS
from .advent import entropy_terms
from .base import StepState, UDAMethod


@METHODS.register("minent")
class MinEnt(UDAMethod):
    """L = CE_main + 0.1 CE_aux + 0.001 Ent(P_t,main) + 0.0002 Ent(P_t,aux); no discriminator."""

    def __init__(self, segmentor: Segmentor, addons: Sequence[nn.Module] = (), seg_aux_weight: float = 0.1,
                 entropy_weights: Sequence[float] = (0.001, 0.0002)) -> None:
        super().__init__(segmentor, addons, seg_aux_weight)
        self.entropy_weights = tuple(entropy_weights)

    def generator_losses(self, state: StepState) -> dict[str, torch.Tensor]:
        """Segmentation plus entropy terms."""
        return {**self.segmentation_loss(state), **entropy_terms(self, state, self.entropy_weights)}
