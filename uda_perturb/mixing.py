"""Domain mixing for self-training (DACS, Tranheden et al. WACV 2021): ClassMix masks, the mixed image,
label and pixel weights, and the strong augmentation applied to the mixed image.

As DAFormer's ``dacs.py`` and ``dacs_transforms.py`` (which DACS's ``trainUDA.py`` preceded): each source
image pastes ``ceil(n / 2)`` of the ``n`` classes present in the whole batch's source labels, the ignore label
included (``torch.unique`` of the batch; a class absent from an image pastes nothing there; option
``classes="image"``: DACS's draw from each image's own classes, 255 included too, as its exclusion line is
commented out); source pixels get weight 1 and target pixels the pseudo-label weight. Whether the colour jitter
(strength 0.2, probability 0.8; DACS's own strength is 0.25) and the Gaussian blur (probability 0.5, sigma
U(0.15, 1.15), kernel ~10 % of the image side, odd) apply is drawn once per batch; their factors, sigma and the
jitter's order per image, as DAFormer calls them image by image. The jitter is kornia 0.5.8's operator
(:mod:`uda_perturb.color_jitter`). Randomness comes from torch's generator, so seeded runs and exact resumes
replay it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torchvision.transforms.functional as TF

from .color_jitter import JITTER_OPERATORS, color_jitter
from .data.transforms import denormalize, normalize

MIX_CLASSES = ("batch", "image")


def class_mix_mask(label: torch.Tensor, ignore_index: Optional[int] = None,
                   generator: Optional[torch.Generator] = None, pool: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``H x W`` float mask, 1 where ``label`` holds one of ``ceil(n / 2)`` classes drawn without replacement
    from the ``n`` values of ``pool`` (default: the values present in ``label``). The ignore label is a value
    like any other, as in both references; pass ``ignore_index`` to leave it out of the pool."""
    classes = torch.unique(label if pool is None else pool)
    if ignore_index is not None:
        classes = classes[classes != ignore_index]
    n = int(classes.numel())
    chosen = classes[torch.randperm(n, generator=generator, device="cpu")[: (n + n % 2) // 2].to(classes.device)]
    return torch.isin(label, chosen).float()


def class_mix_masks(labels: torch.Tensor, classes: str = "batch") -> torch.Tensor:
    """``B x H x W`` ClassMix masks for a batch of source labels: each image's classes drawn from the batch's
    classes (``"batch"``, DAFormer) or from its own (``"image"``, DACS)."""
    if classes not in MIX_CLASSES:
        raise ValueError(f"class mix classes must be one of {MIX_CLASSES}, got {classes!r}")
    return torch.stack([class_mix_mask(y, pool=labels if classes == "batch" else None) for y in labels])


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
                   jitter_probability: float = 0.2, blur: bool = True, jitter_operator: str = "kornia") -> torch.Tensor:
    """DACS's colour jitter (brightness, contrast, saturation, hue each of strength ``jitter_strength``, by
    ``jitter_operator``: see :mod:`uda_perturb.color_jitter`) and Gaussian blur on normalised images;
    ``normalization`` names how they were normalised."""
    if jitter_operator not in JITTER_OPERATORS:
        raise ValueError(f"colour jitter operator must be one of {JITTER_OPERATORS}, got {jitter_operator!r}")
    apply_jitter = float(torch.rand(())) > jitter_probability
    apply_blur = blur and float(torch.rand(())) > 0.5
    if not (apply_jitter or apply_blur):
        return images
    x = denormalize(images.float(), normalization).clamp(0, 1)
    out = []
    s = jitter_strength
    for img in x:
        if apply_jitter:
            img = color_jitter(img, s, jitter_operator)
        if apply_blur:
            sigma = 0.15 + float(torch.rand(())) * 1.0
            k = [blur_kernel_size(img.shape[-1]), blur_kernel_size(img.shape[-2])]
            img = TF.gaussian_blur(img, kernel_size=k, sigma=[sigma, sigma])
        out.append(img)
    return normalize(torch.stack(out), normalization).to(images.dtype)
