"""Multi-level heads of transformer UDA: DAFormer's context-aware fusion (``daformer``, its
``daformer_sepaspp_mitb5`` config) and SegFormer's all-MLP head (``segformer``), written after lhoyer/DAFormer's
``daformer_head.py`` / ``segformer_head.py`` with mmseg's parameter names (``embed_layers``, ``fuse_layer.
aspp_modules``, ``bottleneck``, ``conv_seg``; ``linear_c``, ``linear_fuse``, ``linear_pred``).

Each head is a fusion (every encoder stage embedded by a linear layer, resized to the first stage's 1/4
resolution, concatenated and fused) and a classifier (dropout 0.1 and a 1x1 convolution). ``build_segmentor``
puts the fusion into G, so the perturbation lands on the fused map that feeds the classifier, as APODA perturbs
the classifier's input; F is the dropout and the 1x1 convolution. The other candidates: the encoder's last stage
(the site of DAFormer's ImageNet feature distance; the fusion would then be part of F and the attack would have
to run it, about as costly as the encoder's last stage again) or each stage separately (four perturbations, one
radius each). The fused map is the one place every stage passes through and the only input of the classifier.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..classifier_modules import ALIGN_CORNERS_TAG
from ..losses import upsample
from ..registry import HEADS


class ConvModule(nn.Module):
    """mmcv's ``ConvModule`` with BatchNorm and ReLU: ``conv`` (no bias), ``bn``, ReLU (``relu=False``: none)."""

    def __init__(self, in_ch: int, out_ch: int, k: int, dilation: int = 1, groups: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, k, padding=dilation * (k // 2), dilation=dilation, groups=groups,
                              bias=False)
        self.bn, self.relu = nn.BatchNorm2d(out_ch), relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return torch.relu(x) if self.relu else x


class SeparableConvModule(nn.Module):
    """mmcv's ``DepthwiseSeparableConvModule``: a depthwise 3x3 and a pointwise 1x1, each with BN and ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(in_ch, in_ch, 3, dilation, groups=in_ch)
        self.pointwise_conv = ConvModule(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class MLP(nn.Module):
    """SegFormer's linear embedding of a feature map's tokens (``proj``), returned as a map."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)


def embedded(layers: nn.ModuleDict, stages: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each stage through its embedding (``layers[str(i)]``), resized to the first stage's size (bilinear,
    ``align_corners=False`` as mmseg's ``resize``) and concatenated along channels: both fusions' first half."""
    size = stages[0].shape[-2:]
    return torch.cat([upsample(layers[str(i)](x), size, align_corners=False) for i, x in enumerate(stages)], dim=1)


class SepASPP(nn.Module):
    """DAFormer's fusion (``ASPPWrapper`` with ``sep=True, pool=False``): a 1x1 branch for dilation 1 and a
    depthwise-separable 3x3 branch per other dilation, concatenated, then a 3x3 ``bottleneck``."""

    def __init__(self, in_ch: int, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.aspp_modules = nn.ModuleList(ConvModule(in_ch, channels, 1) if d == 1 else
                                          SeparableConvModule(in_ch, channels, d) for d in dilations)
        self.bottleneck = ConvModule(len(dilations) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([m(x) for m in self.aspp_modules], dim=1))


class DAFormerFusion(nn.Module):
    """Every stage embedded to ``embed_dims`` (``embed_layers``), resized to stage 1, concatenated and fused by
    the separable ASPP (``fuse_layer``) into ``channels``."""

    def __init__(self, in_channels: Sequence[int], channels: int = 256, embed_dims: int = 256,
                 dilations: Sequence[int] = (1, 6, 12, 18)) -> None:
        super().__init__()
        self.out_channels = channels
        self.embed_layers = nn.ModuleDict({str(i): MLP(c, embed_dims) for i, c in enumerate(in_channels)})
        self.fuse_layer = SepASPP(embed_dims * len(in_channels), channels, dilations)

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fuse_layer(embedded(self.embed_layers, stages))


class SegFormerFusion(nn.Module):
    """SegFormer's all-MLP decoder up to its classifier: ``linear_c`` per stage, resized to stage 1,
    concatenated, ``linear_fuse`` (1x1 conv, BN, ReLU)."""

    def __init__(self, in_channels: Sequence[int], embed_dim: int = 256) -> None:
        super().__init__()
        self.out_channels = embed_dim
        self.linear_c = nn.ModuleDict({str(i): MLP(c, embed_dim) for i, c in enumerate(in_channels)})
        self.linear_fuse = ConvModule(embed_dim * len(in_channels), embed_dim, 1)

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.linear_fuse(embedded(self.linear_c, stages))


class Classifier(nn.Module):
    """F of a fusion head: dropout, then a 1x1 convolution named as the reference names it. Tagged
    ``align_corners=False``: mmseg's heads resize logits so (DAFormer's ``resize`` in training and inference), and
    the methods, the evaluation and ``perturb_and_defend`` follow the tag."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.1, name: str = "conv_seg") -> None:
        super().__init__()
        self.dropout, self.name = nn.Dropout2d(dropout), name
        setattr(self, name, nn.Conv2d(in_ch, num_classes, 1))
        setattr(self, ALIGN_CORNERS_TAG, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.name)(self.dropout(x))


class FusionHead(nn.Module):
    """A multi-level head: ``fusion`` (moved into G by ``build_segmentor``) and ``classifier`` (F)."""

    def __init__(self, fusion: nn.Module, classifier: Classifier) -> None:
        super().__init__()
        self.fusion, self.classifier = fusion, classifier

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.fusion(stages))


def _channels(in_channels: object) -> list[int]:
    if not isinstance(in_channels, (list, tuple)) or len(in_channels) != 4:
        raise ValueError(f"a fusion head reads the four stages of a MiT backbone (mit_b0 ... mit_b5); this backbone "
                         f"gives one map of {in_channels} channels")
    return [int(c) for c in in_channels]


@HEADS.register("daformer")
def daformer_head(in_channels: Sequence[int], num_classes: int, channels: int = 256, embed_dims: int = 256,
                  dilations: Sequence[int] = (1, 6, 12, 18), dropout: float = 0.1) -> FusionHead:
    """DAFormer's head (``daformer_sepaspp_mitb5``): embeddings of 256, separable ASPP with dilations
    1/6/12/18, BN + ReLU, dropout 0.1, the 1x1 ``conv_seg``."""
    return FusionHead(DAFormerFusion(_channels(in_channels), channels, embed_dims, dilations),
                      Classifier(channels, num_classes, dropout))


@HEADS.register("segformer")
def segformer_head(in_channels: Sequence[int], num_classes: int, embed_dim: int = 256,
                   dropout: float = 0.1) -> FusionHead:
    """SegFormer's all-MLP head (``embed_dim`` 256 for B0/B1, 768 for B2-B5 in SegFormer's configs), the 1x1
    ``linear_pred``."""
    return FusionHead(SegFormerFusion(_channels(in_channels), embed_dim),
                      Classifier(embed_dim, num_classes, dropout, name="linear_pred"))
