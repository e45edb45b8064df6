"""The defense pass ``classifier(f*)`` and the clean reference it is compared with, taken in the same mode.

A defense such as ``kl`` compares ``classifier(f*)`` with a clean prediction. If the two come from different
modes of a head with BatchNorm or dropout (the caller's train-mode logits against an eval-mode defense pass, or
two different dropout masks), the loss measures the mode gap, not the perturbation, and stays far from 0 as
eps -> 0 (``tests/test_defense_reference.py`` shows the gap). So where the modes can differ, the reference is one
more no-grad head forward at the clean features in the defense pass's own mode (with its dropout masks): at
eps -> 0 every defense loss -> 0, whatever ``clean_logits`` the caller passed.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .model_state import frozen_state, has_active_dropout, mode_sensitive, untracked_statistics
from .objective_context import Classifier
from .perturb_checks import logits_of


def needs_reference(heads: Sequence[nn.Module], defense_bn_mode: str, caller_logits: bool, attack_bn_mode: str) -> bool:
    """Whether the clean logits at hand may come from another mode than the defense pass.

    Nothing to do for a head without train-mode BatchNorm or dropout. An ``eval`` defense pass needs its own
    reference unless the clean logits came from the attack's own pass in eval mode; a ``train`` one (the caller's
    mode) needs it when they came from the attack (frozen) or when dropout draws a new mask in every pass.
    """
    if not mode_sensitive(heads):
        return False
    if defense_bn_mode == "eval":
        return caller_logits or attack_bn_mode != "eval"
    return not caller_logits or has_active_dropout(heads)


def defense_logits(classifier: Classifier, chunks: Sequence[torch.Tensor], f0: torch.Tensor,
                   heads: Sequence[nn.Module], defense_bn_mode: str,
                   reference: bool) -> tuple[list[torch.Tensor], Optional[list[torch.Tensor]]]:
    """``(classifier(chunk) for each f* chunk, the clean reference of each or None)``.

    ``eval``: running statistics, no dropout, buffers untouched; one reference serves every chunk. ``train``: the
    caller's mode; each reference is drawn with the random state its chunk's pass used (the same dropout masks)
    and leaves BatchNorm buffers as they were, so only the defense pass counts as training.
    """
    if defense_bn_mode == "eval":
        with frozen_state(*heads):
            adv = [logits_of(classifier, c) for c in chunks]
            if not reference:
                return adv, None
            with torch.no_grad():
                ref = logits_of(classifier, f0)
        return adv, [ref] * len(chunks)
    adv, refs = [], []
    for c in chunks:
        before = _rng_state(f0.device)
        adv.append(logits_of(classifier, c))
        if reference:
            after = _rng_state(f0.device)
            _set_rng_state(before, f0.device)
            with torch.no_grad(), untracked_statistics(*heads):
                refs.append(logits_of(classifier, f0))
            _set_rng_state(after, f0.device)
    return adv, (refs if reference else None)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, Optional[torch.Tensor]], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)

