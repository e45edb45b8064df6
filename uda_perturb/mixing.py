"""Domain mixing for self-training (DACS, Tranheden et al. WACV 2021): ClassMix masks, the mixed image,
label and pixel weights, and the strong augmentation applied to the mixed image.

Exact to DACS's reference code where it matters for the numbers: each source image pastes ``ceil(n / 2)``
of its own ``n`` present classes (ignore label excluded, as in DACS; DAFormer draws from the batch's classes),
source pixels get weight 1 and target pixels the pseudo-label weight; colour jitter (strength 0.2, applied
with probability 0.8) and Gaussian blur (probability 0.5, sigma U(0.15, 1.15), kernel ~10 % of the image side,
odd) are drawn once per batch as in DAFormer, with per-image jitter factors. Randomness comes from torch's
generator, so seeded runs and exact resumes replay it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torchvision.transforms.functional as TF

from .data.transforms import denormalize, normalize
from .losses import IGNORE_INDEX


def class_mix_mask(label: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``H x W`` float mask, 1 where ``label`` holds one of ``ceil(n / 2)`` classes drawn without replacement
    from the ``n`` classes present in it (ignored pixels never count as a class)."""
    classes = torch.unique(label)
    classes = classes[classes != ignore_index]
    n = int(classes.numel())
    chosen = classes[torch.randperm(n, generator=generator, device="cpu")[: (n + n % 2) // 2].to(classes.device)]
    return torch.isin(label, chosen).float()


def class_mix(source_images: torch.Tensor, source_labels: torch.Tensor, target_images: torch.Tensor,
              pseudo_labels: torch.Tensor, pseudo_weight: torch.Tensor, masks: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste the masked source pixels onto the target images. ``masks`` is ``B x H x W`` (1 = source).

    Returns ``(images, labels, pixel_weights)``: labels are the source labels under the mask and the pseudo-labels
    elsewhere; weights are 1 under the mask and ``pseudo_weight`` (``B x H x W``) elsewhere.
    """
    m = masks.to(source_images.dtype)
    images = m[:, None] * source_images + (1 - m[:, None]) * target_images
    labels = torch.where(masks.bool(), source_labels, pseudo_labels)
    weights = torch.where(masks.bool(), torch.ones_like(pseudo_weight), pseudo_weight)
    return images, labels, weights


def blur_kernel_size(side: int) -> int:
    """DACS's kernel size for one side: about 10 % of it, always odd."""
    c = math.ceil(0.1 * side)
    return int(math.floor(c - 0.5 + c % 2))


def strong_augment(images: torch.Tensor, normalization: str, jitter_strength: float = 0.2,
                   jitter_probability: float = 0.2, blur: bool = True) -> torch.Tensor:
    """DACS's colour jitter (brightness, contrast, saturation, hue each of strength ``jitter_strength``) and
    Gaussian blur on normalised images; ``normalization`` names how they were normalised."""
    apply_jitter = float(torch.rand(())) > jitter_probability
    apply_blur = blur and float(torch.rand(())) > 0.5
    if not (apply_jitter or apply_blur):
        return images
    x = denormalize(images.float(), normalization).clamp(0, 1)
    out = []
    s = jitter_strength
    for img in x:
        if apply_jitter:
            img = TF.adjust_brightness(img, 1 + (2 * float(torch.rand(())) - 1) * s)
            img = TF.adjust_contrast(img, 1 + (2 * float(torch.rand(())) - 1) * s)
            img = TF.adjust_saturation(img, 1 + (2 * float(torch.rand(())) - 1) * s)
            img = TF.adjust_hue(img, (2 * float(torch.rand(())) - 1) * min(s, 0.5))
        if apply_blur:
            sigma = 0.15 + float(torch.rand(())) * 1.0
            k = [blur_kernel_size(img.shape[-1]), blur_kernel_size(img.shape[-2])]
            img = TF.gaussian_blur(img, kernel_size=k, sigma=[sigma, sigma])
        out.append(img)
    return normalize(torch.stack(out), normalization).to(images.dtype)
