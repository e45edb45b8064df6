"""Classifier heads F (registry ``HEADS``): ``head(in_channels, num_classes, **kw)``."""
from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from ..registry import HEADS


@HEADS.register("aspp_v2")
class ASPPv2(nn.Module):
    """DeepLab-v2 ASPP classifier: parallel 3x3 convs with dilation = padding in ``dilations``, summed.

    ``branches=2`` reproduces AdaptSegNet's early-return quirk (only the first two branches summed);
    the default 4 is ADVENT's. Weights are initialised N(0, 0.01), biases zero.
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: tuple[int, ...] = (6, 12, 18, 24),
                 branches: int = 4) -> None:
        super().__init__()
        if branches not in range(1, len(dilations) + 1):
            raise ValueError(f"branches must be in 1..{len(dilations)}, got {branches}")
        convs = [nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
                 for d in dilations[:branches]]
        for conv in convs:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(cast(torch.Tensor, conv.bias))
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


@HEADS.register("deeplabv3")
def deeplabv3_head(in_channels: int, num_classes: int, atrous_rates: tuple[int, ...] = (12, 24, 36)) -> nn.Module:
    """DeepLab-v3 head (ASPP with image pooling, 256 channels, then 3x3 conv + 1x1 classifier); the default
    rates 12/24/36 are for output stride 8 at ~500 px: scale them with small feature maps."""
    return DeepLabHead(in_channels, num_classes, tuple(atrous_rates))


@HEADS.register("conv1x1")
class Conv1x1Head(nn.Module):
    """A single 1x1 convolution: the smallest classifier, one independent decision per position."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
