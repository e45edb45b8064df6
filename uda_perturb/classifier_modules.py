"""Find the ``nn.Module``s behind a classifier callable, so that an attack can freeze their BatchNorm and dropout.

A user passes what they have: a head module, a bound method (``view.classify``), a ``functools.partial``, or a
lambda that picks the logits (``lambda f: head(f)["out"]``). Only the first is an ``nn.Module``; freezing must
reach the modules behind the others too, or an attack silently updates BatchNorm statistics. What cannot be
found is refused, naming the ``modules=`` argument that says it.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional, Sequence

from torch import nn

_DEPTH = 4  # how many callables deep to look (a lambda calling a bound method of an object holding a head)
ALIGN_CORNERS_TAG = "_uda_perturb_align_corners"  # set on a module whose logits are upsampled with this convention


def modules_behind(classifier: Callable[..., Any], modules: Optional[Sequence[nn.Module]] = None) -> list[nn.Module]:
    """The modules ``classifier`` runs: ``modules`` when given (``[]``: none, on purpose), else those found
    behind it (the module itself; a bound method's owner; a ``functools.partial``'s function and arguments; a
    function's closure cells, referenced globals and defaults; a callable object's attributes).

    Raises ``ValueError`` naming ``modules=`` when nothing is found, since freezing would then silently do nothing.
    """
    if modules is not None:
        bad = [type(m).__name__ for m in modules if not isinstance(m, nn.Module)]
        if bad:
            raise TypeError(f"modules= takes nn.Module objects, got {bad[0]}")
        return list(modules)
    found: dict[int, nn.Module] = {}
    _visit(classifier, _DEPTH, found, set())
    if not found:
        raise ValueError(f"no nn.Module found behind the classifier {_name(classifier)}: pass modules=[...] (the "
                         "modules it runs, whose BatchNorm and dropout the attack freezes), or modules=[] if it has "
                         "none")
    return list(found.values())


def _visit(obj: Any, depth: int, found: dict[int, nn.Module], seen: set[int]) -> None:
    if isinstance(obj, nn.Module):
        found.setdefault(id(obj), obj)
        return
    if depth <= 0 or id(obj) in seen:
        return
    seen.add(id(obj))
    children: list[Any] = []
    if inspect.ismethod(obj):
        children = [obj.__self__, obj.__func__]
    elif isinstance(obj, functools.partial):
        children = [obj.func, *obj.args, *obj.keywords.values()]
    elif inspect.isfunction(obj):
        try:
            cv = inspect.getclosurevars(obj)
            children = [*cv.nonlocals.values(), *cv.globals.values()]
        except (TypeError, ValueError):  # e.g. an empty closure cell
            children = []
        children += list(obj.__defaults__ or ()) + list((obj.__kwdefaults__ or {}).values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif hasattr(obj, "__dict__") and not inspect.ismodule(obj) and not inspect.isclass(obj):
        children = list(vars(obj).values())  # a callable object, or a bound method's plain owner
    for child in children:
        _visit(child, depth - 1, found, seen)


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def align_corners_of(modules: Sequence[nn.Module]) -> bool:
    """The upsampling convention a model declares (``split_torchvision`` tags torchvision's heads ``False``, the
    fusion heads' classifier too), else ``True`` (the DeepLab-v2 references')."""
    for module in modules:
        for m in module.modules():
            tag = getattr(m, ALIGN_CORNERS_TAG, None)
            if tag is not None:
                return bool(tag)
    return True
