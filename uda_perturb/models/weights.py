"""Load pretrained weights from a local file (or a torchvision weights name, for users who have them)."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "segmentor"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap_state_dict(obj[key])
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise ValueError("the checkpoint holds no state dict (expected a mapping of names to tensors)")


def load_weights(model: nn.Module, weights: str, *, strict: bool = False) -> tuple[list[str], list[str]]:
    """Load ``weights`` into ``model`` and return ``(missing, unexpected)`` keys.

    ``weights`` is a local path (loaded with ``weights_only=True``) or a torchvision weights name such as
    ``"ResNet50_Weights.IMAGENET1K_V1"`` (torchvision may download it; tests never do). Keys whose shapes
    differ (e.g. a classifier for another number of classes) are skipped and reported as missing.
    Raises ``ValueError`` when no key matches at all, which means a wrong file.
    """
    if os.path.exists(weights):
        state = _unwrap_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    elif "_Weights." in weights:
        from torchvision.models import get_weight

        state = get_weight(weights).get_state_dict(progress=True)
    else:
        raise FileNotFoundError(f"weights {weights!r}: no such file (and not a torchvision weights name)")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"weights {weights!r}: none of its {len(state)} keys match the model's parameters")
    missing, unexpected = model.load_state_dict(usable, strict=False)
    missing = sorted(set(missing) | {k for k in state if k in own and k not in usable})
    unexpected = sorted(set(unexpected) | (set(state) - set(own)))
    if strict and (missing or unexpected):
        raise ValueError(f"weights {weights!r}: missing {missing[:5]}..., unexpected {unexpected[:5]}...")
    return missing, unexpected
