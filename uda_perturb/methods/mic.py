"""MIC's masked image consistency (Hoyer et al., CVPR 2023) as an add-on (``mic``) for methods with an EMA
teacher (``dacs``).

Reproduces lhoyer/MIC ``seg/mmseg/models/uda/masking_consistency_module.py`` in its default mode
(``separatetrgaug``, ``mask_alpha="same"``, ``mask_pseudo_threshold="same"``) and ``BlockMaskGenerator`` of
``seg/mmseg/models/utils/masking_transforms.py``: the target image the host's teacher labelled gets DACS's
strong augmentation, then a random block mask (each block kept with probability ``1 - mask_ratio``, the
normalised image multiplied by the mask); the student's pixel-weighted CE on it against the host's
pseudo-labels of the full image, with their quality weight, times ``lambda_mic``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import pixel_weighted_ce
from ..mixing import strong_augment
from ..registry import ADDONS
from .base import StepState, UDAMethod


def block_size_for(height: int, width: int, reference_block: int = 32, reference_crop: int = 512) -> int:
    """MIC's block size scaled with the input's shorter side (at least 1 px): MIC uses 64-px blocks at its
    1024 x 1024 high-resolution crops and 32 px at 512 x 512 ("half the patch size when training with half
    resolution", its ``experiments.py``), i.e. 32 px per 512 px: 8 px at 120 x 160, 11 px at 180 x 240
    (Python's round)."""
    return max(1, round(reference_block * min(height, width) / reference_crop))


def block_mask(batch: int, height: int, width: int, block: int, ratio: float,
               device: torch.device | str = "cpu", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``B x 1 x H x W`` mask in {0, 1}: a ``round(H / block) x round(W / block)`` grid of uniform draws, 1 where
    the draw exceeds ``ratio``, resized to ``H x W`` with nearest neighbour (MIC's ``generate_mask``)."""
    grid = (batch, 1, max(1, round(height / block)), max(1, round(width / block)))
    keep = (torch.rand(grid, generator=generator) > ratio).float().to(device)
    return F.interpolate(keep, size=(height, width), mode="nearest")


@ADDONS.register("mic")
class MaskedImageConsistency(nn.Module):
    """The MIC loss on masked target images against the host method's pseudo-labels.

    Args:
        mask_ratio: share of blocks masked (0.7).
        block_size: mask block side in pixels; ``None`` scales MIC's 64 px at 512-px crops with the input's
            shorter side (:func:`block_size_for`).
        lambda_mic: loss weight (1).
        color_jitter_strength, color_jitter_probability, blur: the strong augmentation before masking
            (MIC uses DAFormer's: 0.2, 0.2, blur on).
        color_jitter_operator: ``"kornia"`` (MIC's) or ``"torchvision"``; see :mod:`uda_perturb.color_jitter`.
    """

    needs_target = True

    def __init__(self, mask_ratio: float = 0.7, block_size: Optional[int] = None, lambda_mic: float = 1.0,
                 color_jitter_strength: float = 0.2, color_jitter_probability: float = 0.2,
                 blur: bool = True, color_jitter_operator: str = "kornia") -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mic mask_ratio must be in [0, 1), got {mask_ratio}")
        if block_size is not None and block_size < 1:
            raise ValueError(f"mic block_size must be positive, got {block_size}")
        self.mask_ratio, self.block_size, self.lambda_mic = mask_ratio, block_size, lambda_mic
        self.jitter = (color_jitter_strength, color_jitter_probability)
        self.blur, self.jitter_operator = blur, color_jitter_operator

    def check(self, method: UDAMethod) -> None:
        """Refuse methods without an EMA teacher (nothing would give pseudo-labels)."""
        if not hasattr(method, "teacher"):
            raise ConfigError(f"the mic add-on needs a method with an EMA teacher and pseudo-labels (dacs), not "
                              f"{type(method).__name__}")

    def masked_image(self, image: torch.Tensor, normalization: str) -> torch.Tensor:
        """Strong augmentation, then the block mask (masked pixels are 0 in normalised space)."""
        x = strong_augment(image, normalization, *self.jitter, blur=self.blur, jitter_operator=self.jitter_operator)
        h, w = x.shape[-2:]
        block = self.block_size or block_size_for(h, w)
        return x * block_mask(x.shape[0], h, w, block, self.mask_ratio, x.device).to(x.dtype)

    def forward(self, method: UDAMethod, state: StepState) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """``{"mic": ..., "mic_aux": ...}``: the student on the masked target image."""
        if state.pseudo_labels is None or state.pseudo_weights is None or state.teacher_image is None:
            raise ValueError("the mic add-on needs the host method's pseudo-labels (a method with an EMA teacher)")
        x = self.masked_image(state.teacher_image, method.input_normalization)
        if state.teacher_image.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        out = method.segmentor.forward_all(x)
        ac = method.align_corners
        losses = {"mic": self.lambda_mic * pixel_weighted_ce(out.logits, state.pseudo_labels, state.pseudo_weights,
                                                             align_corners=ac)}
        if out.aux_logits is not None:
            losses["mic_aux"] = self.lambda_mic * method.seg_aux_weight * pixel_weighted_ce(
                out.aux_logits, state.pseudo_labels, state.pseudo_weights, align_corners=ac)
        return losses, {"mic_pseudo_weight": float(state.pseudo_weights.mean())}
