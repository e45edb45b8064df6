"""Get the feature maps out of a model that returns logits: forward hooks on the modules whose outputs
``perturb_and_defend`` should perturb (``layer4`` feeding the main classifier, ``layer3`` the auxiliary one).

The trap it is built around: a hook keeps the *latest* output, so in a loop that forwards source then target
before computing the losses, the source features are gone by the time the source loss is built. Hand each
forward's features over as soon as that forward returns, with :meth:`FeatureCapture.take`::

    cap = up.capture_features(model, main="layer4", aux="layer3")
    aux_s, main_s = model(x_s)
    f_s = cap.take()                  # {"main": ..., "aux": ...} of the source forward; the capture is empty again
    aux_t, main_t = model(x_t)
    f_t = cap.take()                  # the target forward's
    ...
    cap.remove()                      # or use ``with up.capture_features(...) as cap:``
"""
from __future__ import annotations

import difflib
from typing import Any, Optional, Union

import torch
from torch import nn

ModuleRef = Union[str, nn.Module]


class FeatureCapture:
    """Forward hooks that keep the latest output of each named module (see the module docstring)."""

    def __init__(self, model: nn.Module, modules: dict[str, ModuleRef]) -> None:
        if not modules:
            raise ValueError("capture_features needs at least one module: main=..., aux=...")
        self._store: dict[str, torch.Tensor] = {}
        self._handles = []
        named = dict(model.named_modules())
        for key, ref in modules.items():
            module = _resolve(named, ref, key)
            self._handles.append(module.register_forward_hook(self._hook(key)))

    def _hook(self, key: str) -> Any:
        def keep(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"capture_features: the module captured as {key!r} returned "
                                f"{type(output).__name__}, not a feature tensor; capture a module that outputs one")
            self._store[key] = output
        return keep

    def __getitem__(self, key: str) -> torch.Tensor:
        """The latest output captured as ``key`` (the features stay attached to the graph)."""
        if key not in self._store:
            raise KeyError(f"nothing captured as {key!r} yet: run the model forward first (captured so far: "
                           f"{sorted(self._store)})")
        return self._store[key]

    def take(self) -> dict[str, torch.Tensor]:
        """Hand over every captured output and clear them, so that the next forward cannot be mistaken for
        this one's (call it after each forward whose features you need)."""
        if not self._store:
            raise RuntimeError("capture_features: nothing captured since the last take(); run the model forward "
                               "first")
        out, self._store = self._store, {}
        return out

    def remove(self) -> None:
        """Remove the hooks and drop what they hold."""
        for h in self._handles:
            h.remove()
        self._handles, self._store = [], {}

    def __enter__(self) -> "FeatureCapture":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _resolve(named: dict[str, nn.Module], ref: ModuleRef, key: str) -> nn.Module:
    if isinstance(ref, nn.Module):
        if not any(m is ref for m in named.values()):
            raise ValueError(f"capture_features: the module given as {key}= is not part of the model")
        return ref
    if ref not in named:
        close = difflib.get_close_matches(ref, [n for n in named if n], n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"capture_features: the model has no module {ref!r}{hint}")
    return named[ref]


def capture_features(model: nn.Module, main: Optional[ModuleRef] = None, aux: Optional[ModuleRef] = None,
                     **more: ModuleRef) -> FeatureCapture:
    """Forward hooks on ``model``'s modules (dotted names such as ``"backbone.layer4"``, or the modules
    themselves) that keep the latest output of each: ``main``, ``aux`` and any further ``name=module``. Returns a
    :class:`FeatureCapture`: ``cap.take()`` after each forward, ``cap.remove()`` or a ``with`` block at the end."""
    modules = {k: v for k, v in {"main": main, "aux": aux, **more}.items() if v is not None}
    return FeatureCapture(model, modules)
