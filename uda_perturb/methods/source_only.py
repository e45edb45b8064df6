"""Source-only training: supervised CE on source; target images never pass through train-mode BatchNorm."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..model_state import frozen_state
from ..models.segmentor import Segmentor
from ..registry import METHODS
from .base import StepState, UDAMethod


@METHODS.register("source_only")
class SourceOnly(UDAMethod):
    """The no-adaptation baseline. With ``photometric`` augmentation in the data config it is the honest
    strong baseline against illumination shifts. The target batch is ignored, unless an add-on needs target
    features: then target images run with BatchNorm in eval mode, so they never change its statistics.

    ``target_bn_stats=True`` is a diagnostic control (AdaBN-like): target images also pass through the
    network in train mode without any loss or gradient, so BatchNorm's running statistics see both domains
    exactly as in the adversarial methods. It separates what a method gains from its losses from what it
    gains from BatchNorm statistics alone.
    """

    uses_target = False

    def __init__(self, segmentor: Segmentor, addons: Sequence[nn.Module] = (), seg_aux_weight: float = 0.1,
                 target_bn_stats: bool = False) -> None:
        super().__init__(segmentor, addons, seg_aux_weight)
        self.target_bn_stats = target_bn_stats
        self.uses_target = target_bn_stats  # the trainer then hands over target batches

    def forward_domains(self, source: dict, target: Optional[dict]) -> StepState:
        """Source in train mode; target (only for add-ons) with BatchNorm in eval mode."""
        state = super().forward_domains(source, None)
        if self.target_bn_stats and target is not None:
            with torch.no_grad():
                self.segmentor.forward_all(target["image"])
        if target is not None and self.wants_target_batches:
            xt = target["image"]
            with frozen_state(self.segmentor, bn_mode="eval"):
                state.target, state.target_size = self.segmentor.forward_all(xt), tuple(xt.shape[-2:])
        return state
