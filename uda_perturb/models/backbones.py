"""Backbones G (registry ``BACKBONES``). Each returns ``{"aux": earlier stage, "out": last stage}``
and exposes ``out_channels``, ``aux_channels`` and ``output_stride``. No weights are loaded unless
``weights=`` names a local checkpoint (or a torchvision weights name)."""
from __future__ import annotations

from typing import Callable, Optional, cast

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..registry import BACKBONES
from .weights import load_weights

BN_MODES = ("train", "frozen", "affine_frozen")


class Backbone(nn.Module):
    """A feature extractor returning the auxiliary and the main feature maps."""

    out_channels: int
    aux_channels: int
    output_stride: int
    # the input normalisation its weights expect (a ``data.*.transforms.normalize`` name); None: any
    input_normalization: Optional[str] = None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def _norm_layer(bn: str) -> Callable[[int], nn.Module]:
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    return FrozenBatchNorm2d if bn == "frozen" else nn.BatchNorm2d


def _finish(model: Backbone, bn: str, weights: Optional[str]) -> Backbone:
    if weights:
        load_weights(cast(nn.Module, getattr(model, "body", model)), weights)
    if bn == "affine_frozen":  # DeepLab-v2 official: BN affine fixed, batch statistics still used
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
    return model


def _dilate(layer: nn.Sequential, dilation: int) -> None:
    """Turn a strided torchvision ResNet stage into a dilated stride-1 one (works for BasicBlock too)."""
    for module in layer.modules():
        if isinstance(module, nn.Conv2d):
            if module.stride == (2, 2):
                module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation, module.padding = (dilation, dilation), (dilation, dilation)


LAYOUTS = ("torchvision", "deeplabv2")


def _deeplabv2_layout(body: nn.Module) -> None:
    """Turn an undilated torchvision Bottleneck ResNet into DeepLab-v2's (Caffe ResNet, as AdaptSegNet's
    ``deeplab_multi.py`` and ADVENT's ``deeplabv2.py``): a downsampling block strides its first 1x1 conv, not
    its 3x3; layer3 and layer4 keep stride 1 and dilate the 3x3 conv of **every** block by 2 and 4."""
    for name, dilation in (("layer2", 1), ("layer3", 2), ("layer4", 4)):
        layer = getattr(body, name)
        first = layer[0]
        stride = 2 if name == "layer2" else 1
        first.conv1.stride, first.conv2.stride = (stride, stride), (1, 1)
        if first.downsample is not None:
            first.downsample[0].stride = (stride, stride)
        for block in layer:
            block.conv2.dilation, block.conv2.padding = (dilation, dilation), (dilation, dilation)


class ResNetBackbone(Backbone):
    """ResNet at output stride 8 with a ceil-mode maxpool; ``aux`` is layer3, ``out`` is layer4.

    ``layout="torchvision"`` (default): torchvision's dilated ResNet (stride on the 3x3 conv, the first block
    of layer3/layer4 dilated 1/2), the network torchvision ImageNet weights were trained as.
    ``layout="deeplabv2"`` (Bottleneck depths): the Caffe DeepLab-v2 ResNet of AdaptSegNet/ADVENT/APODA,
    the network the DeepLab init checkpoints were trained as. Parameter shapes are the same in both, so the
    layout must match the weights."""

    def __init__(self, depth: int, bn: str = "train", weights: Optional[str] = None,
                 layout: str = "torchvision") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == "deeplabv2" and depth < 50:
            raise ValueError("layout 'deeplabv2' exists for Bottleneck ResNets (50, 101, 152) only")
        ctor = getattr(torchvision.models, f"resnet{depth}")
        norm = _norm_layer(bn)
        self.layout = layout
        if layout == "deeplabv2":
            body = ctor(weights=None, norm_layer=norm)
            _deeplabv2_layout(body)
        elif depth >= 50:
            body = ctor(weights=None, replace_stride_with_dilation=[False, True, True], norm_layer=norm)
        else:  # BasicBlock refuses dilation in its constructor: dilate after building
            body = ctor(weights=None, norm_layer=norm)
            _dilate(body.layer3, 2)
            _dilate(body.layer4, 4)
        body.maxpool.ceil_mode = True
        del body.fc, body.avgpool
        self.body = body
        expansion = 4 if depth >= 50 else 1
        self.out_channels, self.aux_channels, self.output_stride = 512 * expansion, 256 * expansion, 8

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer2(b.layer1(x))
        aux = b.layer3(x)
        return {"aux": aux, "out": b.layer4(aux)}


for _depth in (18, 34, 50, 101, 152):
    def _make(depth: int) -> Callable[..., Backbone]:
        def factory(bn: str = "train", weights: Optional[str] = None, layout: str = "torchvision") -> Backbone:
            return _finish(ResNetBackbone(depth, bn, weights=None, layout=layout), bn, weights)

        factory.__name__ = f"resnet{depth}"
        factory.__doc__ = (f"ResNet-{depth} at output stride 8; bn in {BN_MODES}; layout in {LAYOUTS} "
                           "(deeplabv2: the Caffe DeepLab-v2 network of the paper recipes).")
        return factory

    BACKBONES.register(f"resnet{_depth}", _make(_depth))


class VGG16Backbone(Backbone):
    """DeepLab-v2 VGG-16 as AdaptSegNet's ``deeplab_vgg.py``: pool4 and pool5 removed, conv5 dilated 2, then
    fc6 (3x3, dilation 4, 1024 ch) and fc7 (3x3, dilation 4, 1024 ch, as that code; DeepLab's LargeFOV used a
    1x1 fc7), each followed by ReLU; output stride 8. ``aux`` is conv4_3 (512 ch), ``out`` is fc7 (1024 ch)."""

    def __init__(self) -> None:
        super().__init__()
        feats = torchvision.models.vgg16(weights=None).features
        layers = list(feats.children())
        # indices 23 and 30 are pool4 and pool5; conv5 convs are 24, 26, 28
        for i in (24, 26, 28):
            layers[i].dilation, layers[i].padding = (2, 2), (2, 2)
        fc = nn.Sequential(nn.Conv2d(512, 1024, 3, padding=4, dilation=4), nn.ReLU(inplace=True),
                           nn.Conv2d(1024, 1024, 3, padding=4, dilation=4), nn.ReLU(inplace=True))
        self.body = nn.ModuleDict({"features": nn.Sequential(*layers[:23]), "conv5": nn.Sequential(*layers[24:30]),
                                   "fc": fc})
        self.out_channels, self.aux_channels, self.output_stride = 1024, 512, 8

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        aux = self.body["features"](x)
        return {"aux": aux, "out": self.body["fc"](self.body["conv5"](aux))}


@BACKBONES.register("vgg16")
def vgg16(bn: str = "train", weights: Optional[str] = None, layout: str = "deeplabv2") -> Backbone:
    """VGG-16 in the DeepLab-v2 layout (output stride 8), its only layout. ``bn`` and ``layout`` are accepted for
    a signature uniform with the ResNets (so recipes can switch backbone without dropping options)."""
    if layout != "deeplabv2":
        raise ValueError(f"vgg16 exists in the deeplabv2 layout only, got layout {layout!r}")
    model = VGG16Backbone()
    if weights:  # torchvision checkpoints name keys features.N; map them onto the split body
        model_keys = _VGGKeyMap(model)
        load_weights(model_keys, weights)
    return model


class _VGGKeyMap(nn.Module):
    """Exposes the split VGG body under torchvision's ``features.N`` names for weight loading."""

    def __init__(self, backbone: VGG16Backbone) -> None:
        super().__init__()
        layers = list(backbone.body["features"].children()) + [nn.Identity()] + list(backbone.body["conv5"].children())
        self.features = nn.Sequential(*layers)


class MobileNetV3Backbone(Backbone):
    """torchvision MobileNetV3-Large with its last stage dilated (output stride 16, as in LR-ASPP);
    ``aux`` is the last stride-8 stage (40 ch), ``out`` the final 960-channel map."""

    def __init__(self, bn: str = "train") -> None:
        super().__init__()
        norm = _norm_layer(bn)
        feats = torchvision.models.mobilenet_v3_large(weights=None, dilated=True, norm_layer=norm).features
        stages = [0] + [i for i, b in enumerate(feats) if getattr(b, "_is_cn", False)] + [len(feats) - 1]
        self.aux_index = stages[-4]
        self.body = feats
        self.out_channels = feats[-1].out_channels
        self.aux_channels = feats[self.aux_index].out_channels
        self.output_stride = 16

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        aux = self.body[: self.aux_index + 1](x)
        return {"aux": aux, "out": self.body[self.aux_index + 1:](aux)}


@BACKBONES.register("mobilenet_v3_large")
def mobilenet_v3_large(bn: str = "train", weights: Optional[str] = None) -> Backbone:
    """MobileNetV3-Large, dilated last stage (output stride 16)."""
    return _finish(MobileNetV3Backbone(bn), bn, weights)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


class LiteResNet(Backbone):
    """A small residual network for CPU runs: stem to stride 4, one ``aux`` stage, then two dilated stages
    (``out``). ``width`` sets the channels (width, 2w, 4w, 8w). ``output_stride`` 8 strides the aux stage;
    4 keeps it at stride 4 and doubles every dilation instead (same receptive field, 4x the positions), which
    is what thin objects such as poles need at low input resolution."""

    def __init__(self, width: int = 32, bn: str = "train", output_stride: int = 8) -> None:
        super().__init__()
        if output_stride not in (4, 8):
            raise ValueError(f"lite: output_stride must be 4 or 8, got {output_stride}")
        norm = _norm_layer(bn)
        w, d = width, 8 // output_stride  # d: dilation multiplier that keeps the receptive field
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1, bias=False), norm(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, 1, 1, bias=False), norm(w), nn.ReLU(inplace=True),
        )
        self.stage1 = _ResBlock(w, w, 2, 1, norm)                    # stride 4
        self.stage2 = _ResBlock(w, 2 * w, 2 // d, d, norm)           # stride 8 (or 4, dilated) -> aux
        self.stage3 = _ResBlock(2 * w, 4 * w, 1, 2 * d, norm)
        self.stage4 = _ResBlock(4 * w, 8 * w, 1, 4 * d, norm)
        self.out_channels, self.aux_channels, self.output_stride = 8 * w, 2 * w, output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        aux = self.stage2(self.stage1(self.stem(x)))
        return {"aux": aux, "out": self.stage4(self.stage3(aux))}


@BACKBONES.register("lite")
def lite(width: int = 32, bn: str = "train", weights: Optional[str] = None, output_stride: int = 8) -> Backbone:
    """The CPU-sized backbone (output stride 8 or 4), about 1.2M parameters at width 32."""
    return _finish(LiteResNet(width, bn, output_stride), bn, weights)
