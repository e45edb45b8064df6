"""UDA methods (registry ``METHODS``) and add-ons (registry ``ADDONS``)."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from torch import nn

from ..models.segmentor import Segmentor
from ..registry import ADDONS, METHODS
from . import (  # noqa: F401
    adaptsegnet,
    advent,
    apoda,
    dacs,
    feature_distance,
    mic,
    minent,
    perturbation_addon,
    source_only,
)
from .base import StepResult, StepState, UDAMethod

AddonSpec = Union[str, dict, nn.Module]


def build_method(name: str, segmentor: Segmentor, addons: Sequence[AddonSpec] = (),
                 options: Optional[dict[str, Any]] = None) -> UDAMethod:
    """Build a method by name with add-ons given by name, as ``{"name": ..., **settings}`` or as built modules."""
    built = [a if isinstance(a, nn.Module) else ADDONS.build(a) for a in addons]
    method = METHODS.build(name, segmentor=segmentor, addons=built, **(options or {}))
    for addon in built:  # add-ons that need something of the method say so now, not at the first step
        check = getattr(addon, "check", None)
        if check is not None:
            check(method)
    return method


__all__ = ["StepResult", "StepState", "UDAMethod", "build_method"]
