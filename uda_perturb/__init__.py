"""uda_perturb: unsupervised domain adaptation for semantic segmentation by pointwise feature perturbation.

Public API::

    import uda_perturb as up
    seg = up.build_segmentor("deeplabv2", backbone="resnet101", num_classes=19)
    out = up.perturb_and_defend(seg.features(x), seg.classifier, labels=y, domain="source")
    up.list_attacks(), up.list_backbones("resnet*"), up.register_attack("mine")(MyAttack)
"""
from __future__ import annotations

from importlib import metadata as _metadata
from typing import Any, Callable, Iterable, Optional

from . import attacks as _attacks  # noqa: F401  (registers built-in attacks)
from . import data, methods, models  # noqa: F401  (registers datasets, methods and add-ons)
from . import defenses as _defenses  # noqa: F401
from .attacks import AttackObjective
from .capture import FeatureCapture, capture_features
from .defenses import DefenseLoss
from .methods import StepResult, UDAMethod, build_method
from .models import Segmentor, SegmentorOutput, build_segmentor, split_torchvision
from .objective_context import ObjectiveContext
from .perturb import Perturber, PerturbResult, PerturbStats, perturb_and_defend
from .registry import ADDONS, ATTACKS, BACKBONES, DATASETS, DEFENSES, DISCRIMINATORS, HEADS, METHODS, Registry

try:  # the one version number is setup.cfg's, read back from the installed metadata
    __version__ = _metadata.version("uda_perturb")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_REGISTRIES = {"backbones": BACKBONES, "heads": HEADS, "discriminators": DISCRIMINATORS, "attacks": ATTACKS,
               "defenses": DEFENSES, "methods": METHODS, "datasets": DATASETS, "addons": ADDONS}


def _lister(reg: Registry) -> Callable[..., list[str]]:
    def lister(include: str | Iterable[str] = "*", exclude: str | Iterable[str] | None = None) -> list[str]:
        return reg.list(include, exclude)

    lister.__doc__ = f"Names of registered {reg.kind}s matching fnmatch ``include`` and not ``exclude``."
    return lister


def _registrar(reg: Registry) -> Callable[..., Any]:
    def registrar(name: Optional[str] = None, obj: Any = None) -> Any:
        return reg.register(name, obj) if obj is not None else reg.register(name)

    registrar.__doc__ = f"Register a {reg.kind} (decorator or call); duplicate names are rejected."
    return registrar


list_backbones, list_heads, list_discriminators = _lister(BACKBONES), _lister(HEADS), _lister(DISCRIMINATORS)
list_attacks, list_defenses, list_methods, list_datasets = (_lister(ATTACKS), _lister(DEFENSES),
                                                           _lister(METHODS), _lister(DATASETS))
list_addons = _lister(ADDONS)
register_backbone, register_head, register_discriminator = (_registrar(BACKBONES), _registrar(HEADS),
                                                            _registrar(DISCRIMINATORS))
register_attack, register_defense, register_method, register_dataset = (_registrar(ATTACKS), _registrar(DEFENSES),
                                                                        _registrar(METHODS), _registrar(DATASETS))
register_addon = _registrar(ADDONS)


def build_backbone(name: str, **kwargs: Any) -> Any:
    """Build a registered backbone by name."""
    return BACKBONES.build(name, **kwargs)


def build_head(name: str, **kwargs: Any) -> Any:
    """Build a registered classifier head by name (``in_channels``, ``num_classes``)."""
    return HEADS.build(name, **kwargs)


def build_discriminator(name: str, **kwargs: Any) -> Any:
    """Build a registered discriminator by name (``in_channels``)."""
    return DISCRIMINATORS.build(name, **kwargs)


def build_attack(name: str, **kwargs: Any) -> AttackObjective:
    """Build a registered attack objective by name."""
    return ATTACKS.build(name, **kwargs)


def build_defense(name: str, **kwargs: Any) -> DefenseLoss:
    """Build a registered defense loss by name."""
    return DEFENSES.build(name, **kwargs)


def registries() -> dict[str, Registry]:
    """Every registry by plural kind name (``"backbones"``, ``"attacks"``, ...)."""
    return dict(_REGISTRIES)


__all__ = [
    "ADDONS", "ATTACKS", "AttackObjective", "BACKBONES", "DATASETS", "DEFENSES", "DISCRIMINATORS", "DefenseLoss",
    "FeatureCapture", "capture_features",
    "HEADS", "METHODS", "ObjectiveContext", "PerturbResult", "PerturbStats", "Perturber", "Registry", "Segmentor",
    "SegmentorOutput", "StepResult", "UDAMethod", "build_attack", "build_backbone", "build_defense",
    "build_discriminator", "build_head", "build_method", "build_segmentor", "list_addons", "list_attacks",
    "list_backbones", "list_datasets", "list_defenses", "list_discriminators", "list_heads", "list_methods",
    "models", "perturb_and_defend", "register_addon", "register_attack", "register_backbone", "register_dataset",
    "register_defense", "register_discriminator", "register_head", "register_method", "registries",
    "split_torchvision",
]
