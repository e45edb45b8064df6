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
# formats that initialise a backbone from ImageNet (not a trained segmentation model)
INIT_FORMATS = ("deeplab_init", "torchvision")
FORMAT_NORMALIZATION = {"deeplab_init": "caffe", "deeplabv2": "caffe", "deeplabv2_vgg": "caffe",
                        "torchvision": "imagenet", "segmentor": None, "mmseg_uda": "imagenet"}
# a DAFormer / MIC decode head's parts: the fusion (G here) and the classifier (F)
_MMSEG_FUSION = ("embed_layers.", "fuse_layer.", "linear_c.", "linear_fuse.")
_MMSEG_CLASSIFIER = ("conv_seg.", "linear_pred.")
# ASPP classifiers of DeepLab-v2 checkpoints, routed by their input channels: layer4 (ResNet) -> main head,
# layer3 -> aux head; VGG's fc7 -> main head
_HEAD_BY_CHANNELS = {2048: "head", 1024: "aux_head"}


def checkpoint_format(state: dict[str, torch.Tensor]) -> str:
    """The layout of a checkpoint, from its keys:

    - ``deeplab_init``: the Caffe DeepLab-v2 init of AdaptSegNet/ADVENT (``Scale.conv1.weight``, ...,
      ``Scale.layer5.*``, its classifier on layer4);
    - ``deeplabv2``: a ResNet trained by AdaptSegNet's or ADVENT's code (un-prefixed ``conv1.weight``...,
      ``layer5``/``layer6`` ASPP classifiers: in multi-level models ``layer5`` reads layer3 and ``layer6``
      layer4; AdaptSegNet's single-level ``Res_Deeplab`` has ``layer5`` on layer4);
    - ``deeplabv2_vgg``: AdaptSegNet's ``DeeplabVGG`` (``features.N`` renumbered without pool4/pool5, fc6 and
      fc7 appended, ``classifier.conv2d_list``);
    - ``torchvision``: an ImageNet classifier (``conv1.weight`` / ``features.0.weight`` at the top level);
    - ``mmseg_uda``: a DAFormer / MIC checkpoint (mmseg: ``model.backbone.*``, ``model.decode_head.*``, and the
      ``ema_model.*`` / ``imnet_model.*`` copies) or a plain mmseg one (``backbone.*``, ``decode_head.*``);
    - ``segmentor``: this toolkit's own (``backbone.*``, ``head.*``).
    """
    if any(k.startswith(("model.decode_head.", "decode_head.")) for k in state):
        return "mmseg_uda"
    if any(k.startswith("Scale.") for k in state):
        return "deeplab_init"
    if any(k.startswith(("layer5.conv2d_list.", "layer6.conv2d_list.")) for k in state):
        return "deeplabv2"
    if "features.0.weight" in state and any(k.startswith("classifier.conv2d_list.") for k in state):
        return "deeplabv2_vgg"
    if "conv1.weight" in state or "features.0.weight" in state:
        return "torchvision"
    return "segmentor"


def _aspp_targets(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, str]:
    """``{"layer5": "aux_head", ...}``: each ASPP classifier's segmentor head, from its input channels."""
    out = {}
    for prefix in prefixes:
        w = state.get(f"{prefix}.conv2d_list.0.weight")
        if w is not None and w.dim() == 4 and int(w.shape[1]) in _HEAD_BY_CHANNELS:
            out[prefix] = _HEAD_BY_CHANNELS[int(w.shape[1])]
    return out


def _renames(state: dict[str, torch.Tensor], fmt: str) -> dict[str, str]:
    """``{checkpoint key: segmentor key}`` (backbone body, and the DeepLab heads when present); keys with no
    place in a segmentor get ``unmapped.<key>``."""
    if fmt == "segmentor":
        return {k: k for k in state}
    if fmt == "deeplabv2_vgg":
        return {k: _deeplab_vgg_key(k) for k in state}
    heads = _aspp_targets({k.removeprefix("Scale."): v for k, v in state.items()}, ("layer5", "layer6"))
    vgg = "features.0.weight" in state
    out = {}
    for key in state:
        k = key.removeprefix("Scale.")
        prefix = k.split(".", 1)[0]
        if prefix in heads and ".conv2d_list." in k:
            out[key] = f"{heads[prefix]}.convs." + k.split(".conv2d_list.", 1)[1]
        elif vgg and k.startswith("features."):
            out[key] = _vgg_key(k)
        elif not k.startswith(("fc.", "classifier.", "layer5.", "layer6.")):
            out[key] = "backbone.body." + k
        else:
            out[key] = "unmapped." + key
    return out


def _mmseg_key(key: str, encoder: str, segformer: bool) -> str:
    """An mmseg UDA checkpoint's key: the student (``model.``, or no prefix) into this toolkit's names (the
    encoder under ``encoder``: ``backbone.body.`` behind a fusion head, ``backbone.`` alone); the EMA teacher and the
    ImageNet copy (``ema_model.``, ``imnet_model.``) are not part of a segmentor (``other.``); SegFormer's
    ``conv_seg``, which its forward never calls beside ``linear_pred`` (``segformer``: the checkpoint has one), is
    ``unused.``."""
    k = key.removeprefix("model.")
    if k.startswith(("ema_model.", "imnet_model.")):
        return "other." + key
    if k.startswith("backbone."):
        return encoder + k.removeprefix("backbone.")
    part = k.removeprefix("decode_head.")
    if part.startswith(_MMSEG_FUSION):
        return "backbone.fusion." + part
    if part.startswith("conv_seg.") and segformer:
        return "unused." + key
    if part.startswith(_MMSEG_CLASSIFIER):
        return "head." + part
    return "unmapped." + key


def load_mmseg_uda(segmentor: nn.Module, state: dict[str, torch.Tensor], weights: str) -> dict[str, Any]:
    """A DAFormer / MIC checkpoint's student into a segmentor built as it was (``mit_b*`` with the ``daformer`` or
    ``segformer`` head), every tensor in its place: the first key with no place, a shape that differs or a
    parameter left unfilled is refused in one line."""
    from ..errors import CheckpointError

    encoder = "backbone.body." if hasattr(getattr(segmentor, "backbone", None), "fusion") else "backbone."
    segformer = any(k.endswith("decode_head.linear_pred.weight") for k in state)
    names = {k: _mmseg_key(k, encoder, segformer) for k in state}
    own = segmentor.state_dict()
    student = {}
    for old, new in names.items():
        if new.startswith(("other.", "unused.")):
            continue
        if new not in own:
            raise CheckpointError(f"weights {weights!r}: mmseg key {old!r} has no place in this model (built with "
                                  "mit_b* and the daformer or segformer head?)")
        if tuple(own[new].shape) != tuple(state[old].shape):
            raise CheckpointError(f"weights {weights!r}: {old!r} has shape {tuple(state[old].shape)}, the model's "
                                  f"{new!r} {tuple(own[new].shape)} (model.num_classes, or another MiT size?)")
        student[new] = state[old]
    left = [k for k in own if k not in student]
    if left:
        raise CheckpointError(f"weights {weights!r}: the checkpoint fills no {left[0]!r} ({len(left)} tensors left)")
    segmentor.load_state_dict(student)
    return {"format": "mmseg_uda", "loaded": len(student), "missing": [], "unexpected": [],
            "skipped_head": [], "heads_loaded": True,
            "not_loaded": sorted({n.split(".", 2)[1] for n in names.values() if n.startswith("other.")})}


def _vgg_key(key: str) -> str:
    """torchvision VGG-16 ``features.N`` -> the split DeepLab body (pool4 at index 23 removed)."""
    index, rest = key.removeprefix("features.").split(".", 1)
    i = int(index)
    if i < 23:
        return f"backbone.body.features.{i}.{rest}"
    if 23 < i < 30:
        return f"backbone.body.conv5.{i - 24}.{rest}"
    return "unmapped." + key


def _deeplab_vgg_key(key: str) -> str:
    """AdaptSegNet's ``DeeplabVGG``: ``features`` 0-22 = conv1_1..conv4_3, 23-28 = conv5 (pool4 dropped, so
    one less than torchvision's), 29 = fc6, 31 = fc7; ``classifier.conv2d_list`` = the ASPP on fc7."""
    if key.startswith("features."):
        index, rest = key.removeprefix("features.").split(".", 1)
        i = int(index)
        name = f"features.{i}" if i < 23 else f"conv5.{i - 23}" if i < 29 else {29: "fc.0", 31: "fc.2"}.get(i)
        return f"backbone.body.{name}.{rest}" if name else "unmapped." + key
    if key.startswith("classifier.conv2d_list."):
        return "head.convs." + key.removeprefix("classifier.conv2d_list.")
    return "unmapped." + key


def _check_layout(segmentor: nn.Module, fmt: str) -> None:
    """Refuse DeepLab-v2 weights in a torchvision-layout ResNet: the shapes agree, the network does not."""
    layout = getattr(getattr(segmentor, "backbone", None), "layout", None)
    if fmt in ("deeplab_init", "deeplabv2") and layout not in (None, "deeplabv2"):
        from ..errors import CheckpointError

        raise CheckpointError(f"these are DeepLab-v2 ({fmt}) weights, but the backbone has the {layout} layout "
                              "(stride on the 3x3 conv, other dilations): its outputs would be wrong although "
                              "every shape fits; set model.backbone_options.layout: deeplabv2 (build_segmentor: "
                              "backbone_kwargs={'layout': 'deeplabv2'})")


def load_segmentor_weights(segmentor: nn.Module, weights: str) -> dict[str, Any]:
    """Load weights into a whole segmentor, recognising the format by its keys (see :func:`checkpoint_format`):
    DeepLab init checkpoints and models trained by AdaptSegNet's or ADVENT's code (``Scale.`` stripped; each
    ASPP classifier onto the head whose input it reads: layer4 -> main, layer3 -> aux; skipped when its class
    count differs), AdaptSegNet's DeepLab VGG-16, torchvision ImageNet checkpoints (into the backbone) and this
    toolkit's own. DeepLab-v2 weights are refused in a torchvision-layout ResNet. Sets
    ``segmentor.backbone.input_normalization`` to what the weights expect and returns a report ``{format,
    loaded, missing, unexpected, skipped_head, heads_loaded}``; raises when no key matches."""
    state = read_state_dict(weights)
    fmt = checkpoint_format(state)
    if fmt == "mmseg_uda":
        report = load_mmseg_uda(segmentor, state, weights)
        backbone: Any = segmentor.backbone
        backbone.input_normalization = FORMAT_NORMALIZATION[fmt]
        return report
    _check_layout(segmentor, fmt)
    names = _renames(state, fmt)
    renamed = {new: state[old] for old, new in names.items()}
    origin = {new: old for old, new in names.items()}
    own = segmentor.state_dict()
    usable = {k: v for k, v in renamed.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"weights {weights!r} ({fmt} format): none of its {len(state)} keys match the model")
    skipped_head = sorted(k for k in renamed if k.startswith(("head.", "aux_head.")) and k in own and k not in usable)
    segmentor.load_state_dict(usable, strict=False)
    backbone_keys = [k for k in own if k.startswith("backbone.") and not k.endswith("num_batches_tracked")]
    heads = [k for k in own if k.startswith(("head.", "aux_head."))]
    report = {"format": fmt, "loaded": len(usable),
              "missing": sorted(k for k in backbone_keys if k not in usable),
              "unexpected": sorted(origin.get(k, k) for k in renamed if k not in own),
              "skipped_head": skipped_head,
              "heads_loaded": fmt != "segmentor" and bool(heads) and all(k in usable for k in heads)}
    normalization = FORMAT_NORMALIZATION[fmt]
    backbone = getattr(segmentor, "backbone", None)
    if normalization is not None and backbone is not None:
        backbone.input_normalization = normalization
    if fmt in INIT_FORMATS and backbone is not None:
        backbone.pretrained_weights = weights  # the route of its ImageNet weights, for imnet_fd's frozen copy
    return report
