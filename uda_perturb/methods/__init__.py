"""UDA methods (registry ``METHODS``) and add-ons (registry ``ADDONS``)."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from ..models.segmentor import Segmentor
from ..registry import ADDONS, METHODS
from . import adaptsegnet, advent, apoda, dacs, minent, perturbation_addon, source_only  # noqa: F401
from .base import StepResult, StepState, UDAMethod

AddonSpec = Union[str, dict]


def build_method(name: str, segmentor: Segmentor, addons: Sequence[AddonSpec] = (),
                 options: Optional[dict[str, Any]] = None) -> UDAMethod:
    """Build a method by name with add-ons given by name or ``{"name": ..., **settings}``."""
    built = [ADDONS.build(a) for a in addons]
    return METHODS.build(name, segmentor=segmentor, addons=built, **(options or {}))


__all__ = ["StepResult", "StepState", "UDAMethod", "build_method"]
