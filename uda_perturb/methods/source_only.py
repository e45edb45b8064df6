"""Source-only training: supervised CE on source; target images never pass through train-mode BatchNorm."""
from __future__ import annotations

from typing import Optional

from ..model_state import frozen_state
from ..registry import METHODS
from .base import StepState, UDAMethod


@METHODS.register("source_only")
class SourceOnly(UDAMethod):
    """The no-adaptation baseline. With ``photometric`` augmentation in the data config it is the honest
    strong baseline against illumination shifts. The target batch is ignored, unless an add-on needs target
    features: then target images run with BatchNorm in eval mode, so they never change its statistics."""

    uses_target = False

    def forward_domains(self, source: dict, target: Optional[dict]) -> StepState:
        """Source in train mode; target (only for add-ons) with BatchNorm in eval mode."""
        state = super().forward_domains(source, None)
        if target is not None and any(getattr(a, "needs_target", False) for a in self.addons):
            xt = target["image"]
            with frozen_state(self.segmentor, bn_mode="eval"):
                state.target, state.target_size = self.segmentor.forward_all(xt), tuple(xt.shape[-2:])
        return state
