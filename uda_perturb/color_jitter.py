"""Colour jitter of self-training's strong augmentation, on one RGB image in [0, 1].

``kornia`` (default): the operator DACS and DAFormer call, kornia 0.5.8's ``ColorJitter(s, s, s, s)``: four
factors drawn per call, brightness ``b ~ U(1 - s, 1 + s)`` added as ``x + (b - 1)``, contrast ``c ~ U(1 - s,
1 + s)`` multiplied without subtracting the mean (``x * c``), both clipped to [0, 1]; saturation ``x_s * U(1 - s,
1 + s)`` (clipped) and hue ``h + U(-s, s) * 2 pi`` (modulo 2 pi) in HSV; the four applied in a random order
(``randperm(4)``) drawn per call. The HSV conversion follows kornia's formulas (``eps = 1e-6`` in the
saturation). Written here from those definitions, not copied.

``torchvision``: the operator of earlier versions of this toolkit: torchvision's multiplicative brightness,
contrast about the mean grey level, saturation and hue, always in that order. It changes pixels 2-3x less
than the references' (mean absolute change on CamVid dusk frames 0.029 against 0.081).
"""
from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as TF

JITTER_OPERATORS = ("kornia", "torchvision")


def rgb_to_hsv(image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``3 x H x W`` RGB in [0, 1] -> HSV with hue in [0, 2 pi), saturation and value in [0, 1]."""
    maxc, argmax = image.max(dim=0)
    minc = image.min(dim=0).values
    delta = maxc - minc
    s = delta / (maxc + eps)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    r, g, b = (maxc[None] - image).unbind(0)
    candidates = torch.stack([b - g, 2.0 * safe + r - b, 4.0 * safe + g - r])  # red, green, blue is the max
    h = candidates.gather(0, argmax[None])[0] / safe
    h = (h / 6.0) % 1.0
    return torch.stack([2 * math.pi * h, s, maxc])


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv` (hue in radians)."""
    h, s, v = image[0] / (2 * math.pi), image[1], image[2]
    sector = torch.floor(h * 6) % 6
    f = (h * 6) % 6 - sector
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = torch.stack([torch.stack(c) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))])
    idx = sector.long()[None, None].expand(3, 1, *sector.shape)
    return table.gather(1, idx)[:, 0]


def kornia_jitter(image: torch.Tensor, factors: tuple[float, float, float, float], order: list[int]) -> torch.Tensor:
    """kornia 0.5.8's colour jitter with given draws: ``factors`` = (brightness, contrast, saturation, hue) as
    drawn (``b``, ``c``, ``s`` around 1, ``h`` around 0), applied in ``order`` (0 brightness ... 3 hue)."""
    b, c, s, h = factors

    def apply(x: torch.Tensor, k: int) -> torch.Tensor:
        if k == 0:
            return (x + (b - 1.0)).clamp(0, 1)
        if k == 1:
            return (x * c).clamp(0, 1)
        hsv = rgb_to_hsv(x)
        if k == 2:
            hsv = torch.stack([hsv[0], (hsv[1] * s).clamp(0, 1), hsv[2]])
        else:
            hsv = torch.stack([torch.fmod(hsv[0] + h * 2 * math.pi, 2 * math.pi), hsv[1], hsv[2]])
        return hsv_to_rgb(hsv)

    for k in order:
        image = apply(image, k)
    return image


def color_jitter(image: torch.Tensor, strength: float, operator: str = "kornia") -> torch.Tensor:
    """Jitter one ``3 x H x W`` RGB image in [0, 1] with strength ``strength``, drawing from torch's RNG."""
    s = strength
    if operator == "kornia":
        lo = max(1.0 - s, 0.0)
        factors = (lo + float(torch.rand(())) * (min(1.0 + s, 2.0) - lo),  # brightness range clipped to [0, 2]
                   lo + float(torch.rand(())) * (1.0 + s - lo),
                   lo + float(torch.rand(())) * (1.0 + s - lo),
                   (2 * float(torch.rand(())) - 1) * min(s, 0.5))
        return kornia_jitter(image, factors, torch.randperm(4).tolist())
    if operator == "torchvision":
        image = TF.adjust_brightness(image, 1 + (2 * float(torch.rand(())) - 1) * s)
        image = TF.adjust_contrast(image, 1 + (2 * float(torch.rand(())) - 1) * s)
        image = TF.adjust_saturation(image, 1 + (2 * float(torch.rand(())) - 1) * s)
        return TF.adjust_hue(image, (2 * float(torch.rand(())) - 1) * min(s, 0.5))
    raise ValueError(f"colour jitter operator must be one of {JITTER_OPERATORS}, got {operator!r}")
