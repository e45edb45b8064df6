"""AdaptSegNet (Tsai et al., CVPR 2018): output-space adversarial alignment, single- or multi-level."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..models.segmentor import Segmentor
from ..registry import METHODS
from .base import StepState, UDAMethod


@METHODS.register("adaptsegnet")
class AdaptSegNet(UDAMethod):
    """L = CE_main + 0.1 CE_aux (source) + 0.001 BCE(D_main(P_t), source) + 0.0002 BCE(D_aux(P_t), source);
    each D: 0.5 BCE(D(P_s), 0) + 0.5 BCE(D(P_t), 1) on detached softmax maps (AdaptSegNet's
    train_gta2cityscapes_multi.py). Single-level when the segmentor has no aux head."""

    discriminator_space = "softmax"

    def __init__(self, segmentor: Segmentor, addons: Sequence[nn.Module] = (), discriminator: str = "fc",
                 adv_weights: Sequence[float] = (0.001, 0.0002), ndf: int = 64, seg_aux_weight: float = 0.1,
                 discriminator_input: str | None = None) -> None:
        super().__init__(segmentor, addons, seg_aux_weight)
        self.add_discriminators(discriminator, adv_weights, ndf, space=discriminator_input)

    def generator_losses(self, state: StepState) -> dict[str, torch.Tensor]:
        """Segmentation plus adversarial terms."""
        return {**self.segmentation_loss(state), **self.adversarial_loss(state)}
