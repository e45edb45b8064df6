"""Domain discriminators (registry ``DISCRIMINATORS``) and what they look at."""
from __future__ import annotations

import torch
from torch import nn

from ..losses import self_information
from ..registry import DISCRIMINATORS

DISCRIMINATOR_INPUTS = ("softmax", "entropy", "features")


def discriminator_input(space: str, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The tensor a discriminator sees: ``softmax`` of logits (AdaptSegNet), the weighted
    self-information map of logits (ADVENT, ``entropy``), or the ``features`` themselves."""
    if space == "softmax":
        return logits.float().softmax(dim=1)
    if space == "entropy":
        return self_information(logits)
    if space == "features":
        return features
    raise ValueError(f"discriminator input must be one of {DISCRIMINATOR_INPUTS}, got {space!r}")


@DISCRIMINATORS.register("fc")
class FCDiscriminator(nn.Module):
    """AdaptSegNet's fully-convolutional discriminator: five 4x4 stride-2 convs
    (in -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1), LeakyReLU(0.2), no normalisation; output at stride 32."""

    def __init__(self, in_channels: int, ndf: int = 64) -> None:
        super().__init__()
        chans = [in_channels, ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(chans[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@DISCRIMINATORS.register("pixel")
class PixelDiscriminator(nn.Module):
    """Per-position discriminator: 1x1 convs only, so each output looks at exactly one position."""

    def __init__(self, in_channels: int, ndf: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, ndf, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, 1, 1),
        )
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
