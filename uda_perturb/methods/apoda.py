"""APODA (Yang et al., AAAI 2020): AdaptSegNet's alignment plus the pointwise perturbation defense."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import nn

from ..models.segmentor import Segmentor
from ..registry import METHODS
from .adaptsegnet import AdaptSegNet
from .perturbation_addon import PerturbationAddon


@METHODS.register("apoda")
class APODA(AdaptSegNet):
    """APODA as this toolkit reads the paper's abstract (its method section was not available to us, so every
    default here is our choice, configurable): AdaptSegNet's loss ``L_seg + 0.001 L_adv`` (output-space
    discriminator) plus the defense ``lambda_s CE(F(f_s*), y_s) + lambda_t KL(p(f_t) || p(f_t*))``, where ``f*``
    are pointwise perturbations of the main features that attack both the classifier and the discriminator:
    each objective's per-position direction is normalised before the two are summed (``combine: balanced``),
    so each steers half of the step whichever gradient is larger at the moment (the classifier's with an
    untrained D, D's in most of v4's training). ``perturbation`` holds the :class:`PerturbationAddon` settings
    (``combine: sum`` gives the earlier rule, ``eps``, ``lambda_source``, ``lambda_target``, ...)."""

    def __init__(self, segmentor: Segmentor, addons: Sequence[nn.Module] = (), discriminator: str = "fc",
                 adv_weights: Sequence[float] = (0.001, 0.0002), ndf: int = 64, seg_aux_weight: float = 0.1,
                 discriminator_input: Optional[str] = None, perturbation: Optional[dict[str, Any]] = None) -> None:
        defense = PerturbationAddon(**(perturbation or {}))
        super().__init__(segmentor, [defense, *addons], discriminator, adv_weights, ndf, seg_aux_weight,
                         discriminator_input)
