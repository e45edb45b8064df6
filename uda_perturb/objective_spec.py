"""Attack objectives and defense losses as the user names them (a name, ``{name: weight}``, a config mapping, a
module, or a list of these), resolved into weighted terms."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from torch import nn

from .registry import Registry

ObjectiveSpec = Union[str, Mapping[str, Any], nn.Module, Sequence[Union[str, Mapping[str, Any], nn.Module]]]


@dataclass
class Term:
    """One objective: its name, its weight and the module computing it."""

    name: str
    weight: float
    module: nn.Module


def resolve(registry: Registry, spec: ObjectiveSpec, weights: Optional[Mapping[str, float]]) -> list[Term]:
    """Turn names / ``{name: weight}`` / ``{"name":..., "weight":..., **kw}`` / modules into weighted terms."""
    if isinstance(spec, (str, nn.Module)):
        spec = [spec]
    elif isinstance(spec, Mapping) and "name" not in spec:  # {name: weight}
        spec = [{"name": k, "weight": v} for k, v in spec.items()]
    elif isinstance(spec, Mapping):
        spec = [spec]
    terms = []
    for item in spec:
        if isinstance(item, nn.Module):
            name, weight, module = type(item).__name__, 1.0, item
        elif isinstance(item, str):
            name, weight, module = item, 1.0, registry.build(item)
        else:
            cfg = dict(item)
            weight = float(cfg.pop("weight", 1.0))
            name = cfg["name"]
            module = registry.build(cfg)
        if weights and name in weights:
            weight = float(weights[name])
        terms.append(Term(name, weight, module))
    if not terms:
        raise ValueError(f"at least one {registry.kind} is needed")
    return terms
