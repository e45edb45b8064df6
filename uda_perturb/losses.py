"""Pixel losses shared by attacks, defenses and methods (the formulas of AdaptSegNet's and ADVENT's code)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
SOURCE_LABEL = 0.0  # AdaptSegNet convention: D learns source -> 0, target -> 1
TARGET_LABEL = 1.0


def upsample(logits: torch.Tensor, size: Sequence[int] | None, align_corners: bool = True) -> torch.Tensor:
    """Bilinear upsampling of ``B x K x h x w`` logits to ``size`` (no-op when already that size).
    ``align_corners=True`` as the DeepLab-v2 references (AdaptSegNet, ADVENT, DACS); torchvision's and mmseg's
    models use False."""
    if size is None or tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=align_corners)


def seg_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
           weight: torch.Tensor | None = None, align_corners: bool = True) -> torch.Tensor:
    """Cross-entropy averaged over valid pixels; logits are upsampled to the label size first.

    With per-class ``weight`` it is the weighted mean ``sum_i w_{y_i} CE_i / sum_i w_{y_i}`` (PyTorch's
    convention). Returns 0 (with a graph) when every pixel is ignored, instead of NaN.
    """
    logits = upsample(logits, tuple(labels.shape[-2:]), align_corners)
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels.long(), weight=weight, ignore_index=ignore_index)


def pixel_weighted_ce(logits: torch.Tensor, labels: torch.Tensor, pixel_weights: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX, weight: torch.Tensor | None = None,
                      align_corners: bool = True) -> torch.Tensor:
    """The self-training loss of DACS/DAFormer: ``mean over all B x H x W pixels of pixel_weights * CE``
    (mmseg's per-pixel ``seg_weight`` with mean reduction; ignored pixels contribute 0).

    With per-class ``weight`` it is normalised as :func:`seg_ce` is: ``sum_i p_i w_{y_i} CE_i / sum_i w_{y_i}``
    over the valid pixels, so class weights re-balance the classes without scaling the loss (an option of
    ours; neither reference weights this loss). Logits are upsampled to the label size first."""
    logits = upsample(logits, tuple(labels.shape[-2:]), align_corners)
    ce = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="none")
    w = pixel_weights.float()
    if weight is None:
        return (ce * w).mean()
    wy = weight.float()[labels.clamp(0, weight.numel() - 1).long()] * (labels != ignore_index)
    return (ce * w * wy).sum() / wy.sum().clamp_min(torch.finfo(torch.float32).tiny)


def self_information(logits: torch.Tensor) -> torch.Tensor:
    """ADVENT's weighted self-information map ``-P log P / log C`` (same shape as ``logits``)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -log_p.exp() * log_p / math.log(logits.shape[1])


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """Normalised entropy per pixel, ``B x h x w``, in [0, 1]."""
    return self_information(logits).sum(dim=1)


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean normalised entropy over batch, height and width (ADVENT's MinEnt loss)."""
    return entropy_map(logits).mean()


def kl_div(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of ``KL(p || q) = sum_c p (log p - log q)``, from logits over dim 1."""
    log_p = F.log_softmax(p_logits.float(), dim=1)
    log_q = F.log_softmax(q_logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def bce_to(logits: torch.Tensor, label: float) -> torch.Tensor:
    """Binary cross-entropy with logits against a constant domain label."""
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), label))
