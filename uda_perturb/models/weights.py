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


def read_state_dict(weights: str) -> dict[str, torch.Tensor]:
    """The state dict in a local file (loaded with ``weights_only=True``) or of a torchvision weights name
    such as ``"ResNet50_Weights.IMAGENET1K_V1"`` (torchvision may download it; tests never do)."""
    if os.path.exists(weights):
        return _unwrap_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    if "_Weights." in weights:
        from torchvision.models import get_weight

        return dict(get_weight(weights).get_state_dict(progress=True))
    raise FileNotFoundError(f"weights {weights!r}: no such file (and not a torchvision weights name)")


def load_weights(model: nn.Module, weights: str, *, strict: bool = False) -> tuple[list[str], list[str]]:
    """Load ``weights`` into ``model`` and return ``(missing, unexpected)`` keys.

    ``weights`` is a local path (loaded with ``weights_only=True``) or a torchvision weights name such as
    ``"ResNet50_Weights.IMAGENET1K_V1"`` (torchvision may download it; tests never do). Keys whose shapes
    differ (e.g. a classifier for another number of classes) are skipped and reported as missing.
    Raises ``ValueError`` when no key matches at all, which means a wrong file.
    """
    state = read_state_dict(weights)
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


# Which input normalisation each checkpoint format's weights expect.
FORMAT_NORMALIZATION = {"deeplab_init": "caffe", "torchvision": "imagenet", "segmentor": None}


def checkpoint_format(state: dict[str, torch.Tensor]) -> str:
    """``deeplab_init`` (Caffe DeepLab-v2 init of AdaptSegNet/ADVENT: ``Scale.conv1.weight``, ...,
    ``Scale.layer5.*``), ``torchvision`` (an ImageNet classifier: ``conv1.weight``/``features.0.weight`` at the
    top level) or ``segmentor`` (this toolkit's ``backbone.*``/``head.*``)."""
    if any(k.startswith("Scale.") for k in state):
        return "deeplab_init"
    if "conv1.weight" in state or "features.0.weight" in state:
        return "torchvision"
    return "segmentor"


def _to_segmentor_keys(state: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """Rename a checkpoint's keys to the segmentor's (backbone body, and the DeepLab head when it fits)."""
    if fmt == "segmentor":
        return state
    out = {}
    vgg = "features.0.weight" in state or any(k.startswith("Scale.features.") for k in state)
    for key, value in state.items():
        k = key.removeprefix("Scale.")
        if k.startswith("layer5.conv2d_list."):  # DeepLab-v2's ASPP classifier on layer4 = our main head
            out["head.convs." + k.removeprefix("layer5.conv2d_list.")] = value
        elif vgg and k.startswith("features."):
            out.update(_vgg_key(k, value))
        elif not k.startswith(("fc.", "classifier.", "layer5.")):
            out["backbone.body." + k] = value
    return out


def _vgg_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchvision VGG-16 ``features.N`` -> the split DeepLab body (pool4 at index 23 removed)."""
    index, rest = key.removeprefix("features.").split(".", 1)
    i = int(index)
    if i < 23:
        return {f"backbone.body.features.{i}.{rest}": value}
    if 23 < i < 30:
        return {f"backbone.body.conv5.{i - 24}.{rest}": value}
    return {}


def load_segmentor_weights(segmentor: nn.Module, weights: str) -> dict[str, Any]:
    """Load init weights into a whole segmentor, recognising the format by its keys (see
    :func:`checkpoint_format`): DeepLab init checkpoints (``Scale.`` stripped; ``layer5`` onto the main ASPP head
    when its class count matches, skipped otherwise), torchvision ImageNet checkpoints (into the backbone) and
    this toolkit's own. Sets ``segmentor.backbone.input_normalization`` to what the weights expect and returns
    a report ``{format, loaded, missing, unexpected, skipped_head}``; raises when no key matches."""
    state = read_state_dict(weights)
    fmt = checkpoint_format(state)
    renamed = _to_segmentor_keys(state, fmt)
    own = segmentor.state_dict()
    usable = {k: v for k, v in renamed.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"weights {weights!r} ({fmt} format): none of its {len(state)} keys match the model")
    skipped_head = sorted(k for k in renamed if k.startswith("head.") and k not in usable)
    segmentor.load_state_dict(usable, strict=False)
    backbone_keys = [k for k in own if k.startswith("backbone.") and not k.endswith("num_batches_tracked")]
    report = {"format": fmt, "loaded": len(usable),
              "missing": sorted(k for k in backbone_keys if k not in usable),
              "unexpected": sorted(k for k in renamed if k not in own), "skipped_head": skipped_head}
    normalization = FORMAT_NORMALIZATION[fmt]
    backbone = getattr(segmentor, "backbone", None)
    if normalization is not None and backbone is not None:
        backbone.input_normalization = normalization
    return report
