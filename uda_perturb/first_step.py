"""The attack's first step from the caller's own forward graph.

Inside a training step the caller has already run the classifier on the clean features, and its ``clean_logits``
carry that graph. The first attack step needs only input gradients at the clean features, so it can take them by
a backward through that graph (kept for the caller's own backward) instead of a head forward of its own.

Where the head has no train-mode BatchNorm and no dropout (DeepLab-v2's ASPP classifier, the paper's network)
the caller's forward and the attack's own are the same function, so this is done automatically (``first_step=
"auto"``). Where it has them, the caller's graph normalises with batch statistics and draws dropout masks while
the attack's own pass uses running statistics without dropout, so the two directions differ; ``"caller"`` takes
the caller's graph anyway, ``"own"`` always makes the attack's own forward.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .model_state import mode_sensitive

FIRST_STEP_MODES = ("auto", "caller", "own")
_NODE_BUDGET = 20_000  # graph nodes searched for the features before giving up (a head's graph has far fewer)


def can_reuse(mode: str, heads: Sequence[nn.Module], features: torch.Tensor, clean_logits: Optional[torch.Tensor],
              random_start: bool) -> bool:
    """Whether the first attack step may take its gradients from the graph of the caller's ``clean_logits``: they
    were computed from ``features`` at feature resolution with autograd on, the attack starts at the clean
    features, and (``auto``) the head's mode does not matter."""
    if mode == "own" or random_start or clean_logits is None or not torch.is_grad_enabled():
        return False
    if not (clean_logits.requires_grad and features.requires_grad):
        return False
    if tuple(clean_logits.shape[-2:]) != tuple(features.shape[-2:]):
        return False
    if mode == "auto" and mode_sensitive(heads):
        return False
    return graph_reaches(clean_logits, features)


def graph_reaches(output: torch.Tensor, source: torch.Tensor) -> bool:
    """Whether ``output``'s autograd graph has ``source`` as an input, searching from ``output`` and stopping at
    ``source`` (so a connected head's graph is searched, not the backbone behind it)."""
    target = source.grad_fn
    start = output.grad_fn
    if start is None:
        return False
    stack, seen = [start], {id(start)}
    while stack and len(seen) < _NODE_BUDGET:
        node = stack.pop()
        if node is target or (target is None and getattr(node, "variable", None) is source):
            return True
        for child, _ in node.next_functions:
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return False


def check_discriminator_output(output: Optional[torch.Tensor], clean_logits: Optional[torch.Tensor],
                               discriminator: Optional[nn.Module]) -> None:
    """Refuse a ``clean_discriminator_output`` that cannot be D's output on the maps built from ``clean_logits``:
    without a discriminator or clean logits, not a tensor, or with a graph that does not reach the logits."""
    if output is None:
        return
    if discriminator is None or clean_logits is None:
        raise ValueError("clean_discriminator_output needs discriminator= and clean_logits= (it is D's output on the "
                         "maps built from the clean logits)")
    if not isinstance(output, torch.Tensor) or output.grad_fn is None or not graph_reaches(output, clean_logits):
        raise ValueError("clean_discriminator_output must be D's output on the maps built from clean_logits, with "
                         "its graph (computed with autograd on, from those logits)")


def reuses_discriminator_output(mode: str, discriminator: Optional[nn.Module]) -> bool:
    """Whether the first step may take the discriminator objective from the caller's D output: a D without
    BatchNorm or dropout gives the same output in the caller's mode and in the attack's (``auto``), or asked."""
    return discriminator is not None and (mode == "caller" or not mode_sensitive([discriminator]))
