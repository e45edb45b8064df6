"""Freeze model state while an attack runs: no BatchNorm statistics updated, dropout off, modes restored."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

_BN = (nn.modules.batchnorm._BatchNorm,)
DROPOUT_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@contextlib.contextmanager
def frozen_state(*modules: nn.Module | None, bn_mode: str = "eval") -> Iterator[None]:
    """Run the body with every BatchNorm and dropout layer of ``modules`` frozen.

    ``bn_mode="eval"`` normalises with running statistics (deterministic attack);
    ``bn_mode="batch"`` keeps batch statistics but restores the running buffers afterwards.
    Dropout is always disabled. Every module's ``training`` flag and every BN buffer is restored on exit,
    also when the body raises.
    """
    if bn_mode not in ("eval", "batch"):
        raise ValueError(f"bn_mode must be 'eval' or 'batch', got {bn_mode!r}")
    seen: dict[int, nn.Module] = {}
    for module in modules:
        if module is None:
            continue
        for m in module.modules():
            seen.setdefault(id(m), m)
    modes = {k: m.training for k, m in seen.items()}
    buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for m in seen.values():
            if isinstance(m, DROPOUT_LAYERS):
                m.eval()
            elif isinstance(m, _BN):
                if bn_mode == "eval":
                    m.eval()
                else:
                    buffers += [(b, b.detach().clone()) for b in m.buffers(recurse=False)]
        yield
    finally:
        with torch.no_grad():
            for live, saved in buffers:
                live.copy_(saved)
        for k, m in seen.items():
            m.training = modes[k]


def mode_sensitive(modules: Iterable[nn.Module | None], kinds: tuple[type, ...] = _BN + DROPOUT_LAYERS) -> bool:
    """Whether any BatchNorm or dropout layer (any layer of ``kinds``) of ``modules`` is in training mode, i.e.
    whether a forward pass depends on the mode it runs in (batch statistics, random masks)."""
    return any(isinstance(m, kinds) and m.training for module in modules if module is not None
               for m in module.modules())


def has_active_dropout(modules: Iterable[nn.Module | None]) -> bool:
    """Whether any dropout layer of ``modules`` is in training mode (a forward pass draws random masks)."""
    return mode_sensitive(modules, DROPOUT_LAYERS)


@contextlib.contextmanager
def untracked_statistics(*modules: nn.Module | None) -> Iterator[None]:
    """Run the body in the modules' own modes (train-mode BatchNorm normalises with batch statistics, dropout is
    random) without updating any BatchNorm buffer: a reference forward that must not count as training.

    The buffers are not written at all (``track_running_stats`` off for the body), rather than written and put
    back: a later backward through an earlier train-mode pass checks that they were not modified in place."""
    bns = {id(m): m for module in modules if module is not None for m in module.modules()
           if isinstance(m, _BN) and m.training and m.track_running_stats}
    try:
        for m in bns.values():
            m.track_running_stats = False
        yield
    finally:
        for m in bns.values():
            m.track_running_stats = True
