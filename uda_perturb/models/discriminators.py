"""Domain discriminators (registry ``DISCRIMINATORS``) and what they look at."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn

from ..losses import self_information
from ..registry import DISCRIMINATORS

# "entropy" is the earlier name of "self_information" (ADVENT's map is per class, not the summed entropy)
DISCRIMINATOR_INPUTS = ("softmax", "self_information", "entropy", "features")
DiscriminatorSpace = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


def discriminator_input(space: DiscriminatorSpace, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The tensor a discriminator sees: ``softmax`` of logits (AdaptSegNet), ADVENT's weighted
    self-information map ``-p log p / log K`` per class (``self_information``, alias ``entropy``; K channels),
    the ``features`` themselves (a feature-level D), or ``space(features, logits)`` for a callable. ``logits`` are
    at the resolution D works at (pixel size, for the output-space discriminators)."""
    if callable(space):
        return space(features, logits)
    if space == "softmax":
        return logits.float().softmax(dim=1)
    if space in ("self_information", "entropy"):
        return self_information(logits)
    if space == "features":
        return features
    raise ValueError(f"discriminator input must be one of {DISCRIMINATOR_INPUTS} or a callable, got {space!r}")


def input_channels(discriminator: nn.Module) -> Optional[int]:
    """The channel count ``discriminator``'s first convolution (or linear layer) expects, ``None`` if unknown."""
    for m in discriminator.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
        if isinstance(m, nn.Linear):
            return int(m.in_features)
    return None


def check_discriminator_input(discriminator: nn.Module, space: DiscriminatorSpace, d_in: torch.Tensor,
                              features: torch.Tensor, num_classes: int) -> None:
    """Refuse a discriminator input whose channels differ from what D's first layer takes, naming the setting
    that fits (a wrong space would otherwise feed D the wrong thing silently when the counts happen to agree, and
    crash deep in a convolution when they do not)."""
    want = input_channels(discriminator)
    if want is None or d_in.shape[1] == want:
        return
    fits = [f"'{s}' ({n} channels)" for s, n in (("softmax", num_classes), ("self_information", num_classes),
                                                 ("features", features.shape[1])) if n == want]
    hint = f"; discriminator_input={' or '.join(fits)} fits" if fits else ""
    name = space if isinstance(space, str) else getattr(space, "__name__", "the callable")
    raise ValueError(f"the discriminator's first layer takes {want} channels, but discriminator_input={name!r} gives "
                     f"it {d_in.shape[1]}{hint}")


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
