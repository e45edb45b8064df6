"""DACS (Tranheden et al., WACV 2021): self-training with a mean teacher and ClassMix, the training step
shared by DAFormer, HRDA and MIC. Defaults are those of the reference code (vikolss/DACS ``trainUDA.py``,
lhoyer/DAFormer ``mmseg/models/uda/dacs.py``); every departure is an option, off by default."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..color_jitter import JITTER_OPERATORS
from ..losses import pixel_weighted_ce
from ..mixing import MIX_CLASSES, class_mix, class_mix_masks, strong_augment
from ..models.segmentor import Segmentor
from ..registry import METHODS
from .base import StepState, UDAMethod
from .mean_teacher import MeanTeacher

CE_MEANS = ("valid", "all")  # the source CE over labelled pixels (DACS) or over every pixel (DAFormer's mmseg)


def pseudo_labels(teacher_logits: torch.Tensor, threshold: float, ignore_top: int = 0,
                  ignore_bottom: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, weight)``: the teacher's argmax and, at every pixel, the share of the batch's pixels whose
    confidence reaches ``threshold`` (DACS's single pseudo-label weight, ``B x H x W``); the weight is 0 on the
    top ``ignore_top`` and bottom ``ignore_bottom`` rows (DAFormer's ``pseudo_weight_ignore_top/bottom``)."""
    conf, labels = teacher_logits.float().softmax(dim=1).max(dim=1)
    share = (conf >= threshold).float().mean()
    weight = share.expand_as(conf).clone()
    if ignore_top > 0:
        weight[:, :ignore_top] = 0
    if ignore_bottom > 0:
        weight[:, -ignore_bottom:] = 0
    return labels, weight


@METHODS.register("dacs")
class DACS(UDAMethod):
    """Source CE on the student, plus ``mix_weight`` x the pixel-weighted CE of the student on ClassMix images
    (source classes pasted onto target images) against mixed labels (source labels + the EMA teacher's
    pseudo-labels on the target image, weighted by the share of confident teacher pixels, threshold 0.968).

    As in DAFormer's ``forward_train``: the teacher is in train mode with dropout off (its BatchNorm uses the
    target batch's statistics), its EMA covers parameters only, it labels the target image as the data
    pipeline gives it (DAFormer's pipelines have no photometric jitter: when the recipe jitters target batches,
    the teacher gets the same crop without the jitter), and the mixed CE carries no class weights.

    Where the two references differ, which one each choice follows: ClassMix draws from the batch's classes,
    the ignore label included (DAFormer; DACS draws per image, an option); the colour jitter is kornia 0.5.8's
    operator in both, at DAFormer's strength 0.2 (DACS: 0.25); the EMA warm-up gives a = 0.5 after the first
    step (DAFormer; DACS: 0); the source CE averages over valid pixels (DACS and ADVENT; ``source_ce_mean="all"``
    as mmseg 0.16 under DAFormer, which divides by all pixels, ignored ones included) and logits are upsampled
    with the network's convention (``align_corners=True`` on DeepLab-v2 as DACS, ``False`` on DAFormer's MiT
    network as DAFormer).

    Args:
        alpha: EMA factor of the teacher (0.99, as DACS and DAFormer).
        pseudo_threshold: teacher confidence that counts a pixel as confident (0.968).
        color_jitter_strength, color_jitter_probability, blur: the strong augmentation of the mixed image
            (DAFormer's 0.2, 0.2, on; DACS's own strength is 0.25).
        color_jitter_operator: ``"kornia"`` (both references' kornia 0.5.8 operator) or ``"torchvision"`` (the
            earlier operator of this toolkit, which changes pixels 2-3x less); see :mod:`uda_perturb.color_jitter`.
        class_mix_classes: ``"batch"`` (DAFormer: each image pastes half of the batch's source classes, the
            ignore label included) or ``"image"`` (DACS: half of its own classes).
        psweight_ignore_top, psweight_ignore_bottom: rows at the top and bottom of the target image whose
            pseudo-labels get weight 0 (DAFormer's options; 15 and 120 for its Cityscapes crops, where the
            ego-car and the rectification border sit; 0 by default, as DAFormer's base ``dacs``).
        mix_class_weights: option of ours, off in both references: weight the mixed CE with the recipe's
            class weights too (normalised by their sum, as the source CE). With a weak teacher it puts most of
            the target loss on tail-class pseudo-labels that are mostly wrong.
        teacher_bn: ``"batch"`` (references) or ``"stored"`` (option: eval mode with the student's running
            statistics); see :class:`MeanTeacher`.
        teacher_jittered_input: option: the teacher labels the photometrically jittered target batch instead.
        source_ce_mean: ``"valid"`` (DACS: the source CE's mean over the labelled pixels) or ``"all"`` (DAFormer's
            mmseg 0.16 ``CrossEntropyLoss``: the sum over labelled pixels divided by all pixels, so a crop with
            ignored pixels weighs less; the DAFormer / MIC recipes set it). With class weights (our option) the
            weighted mean over labelled pixels is kept either way.
    """

    def __init__(self, segmentor: Segmentor, addons: Sequence[nn.Module] = (), seg_aux_weight: float = 0.1,
                 alpha: float = 0.99, pseudo_threshold: float = 0.968, mix_weight: float = 1.0,
                 color_jitter_strength: float = 0.2, color_jitter_probability: float = 0.2, blur: bool = True,
                 mix_class_weights: bool = False, teacher_bn: str = "batch",
                 teacher_jittered_input: bool = False, color_jitter_operator: str = "kornia",
                 class_mix_classes: str = "batch", psweight_ignore_top: int = 0,
                 psweight_ignore_bottom: int = 0, source_ce_mean: str = "valid") -> None:
        super().__init__(segmentor, addons, seg_aux_weight)
        self.teacher = MeanTeacher(segmentor, alpha, bn=teacher_bn)
        self.pseudo_threshold, self.mix_weight = pseudo_threshold, mix_weight
        self.jitter = (color_jitter_strength, color_jitter_probability)
        self.blur, self.mix_class_weights = blur, mix_class_weights
        self.teacher_jittered_input = teacher_jittered_input
        if color_jitter_operator not in JITTER_OPERATORS:
            raise ValueError(f"dacs color_jitter_operator must be one of {JITTER_OPERATORS}, got "
                             f"{color_jitter_operator!r}")
        if class_mix_classes not in MIX_CLASSES:
            raise ValueError(f"dacs class_mix_classes must be one of {MIX_CLASSES}, got {class_mix_classes!r}")
        if source_ce_mean not in CE_MEANS:
            raise ValueError(f"dacs source_ce_mean must be one of {CE_MEANS}, got {source_ce_mean!r}")
        self.source_ce_mean = source_ce_mean
        if psweight_ignore_top < 0 or psweight_ignore_bottom < 0:
            raise ValueError("dacs psweight_ignore_top and psweight_ignore_bottom must be >= 0")
        self.jitter_operator, self.class_mix_classes = color_jitter_operator, class_mix_classes
        self.psweight_ignore = (psweight_ignore_top, psweight_ignore_bottom)

    def teacher_input(self, target: dict) -> torch.Tensor:
        """The image the teacher labels: the target batch without photometric jitter (unless
        ``teacher_jittered_input``)."""
        if self.teacher_jittered_input:
            return target["image"]
        return target.get("image_unjittered", target["image"])

    def forward_domains(self, source: dict, target: Optional[dict]) -> StepState:
        """Student on source; teacher pseudo-labels on target; student on the augmented ClassMix images."""
        if target is None:
            raise ValueError("dacs needs target batches")
        xs, ys, xt = source["image"], source["label"], target["image"]
        if xs.shape != xt.shape:
            raise ValueError(f"dacs mixes source and target images of one size: got {tuple(xs.shape)} and "
                             f"{tuple(xt.shape)}; give both domains the same transforms.size")
        state = StepState(self.segmentor.forward_all(xs), ys, tuple(xs.shape[-2:]))
        state.teacher_image = self.teacher_input(target)
        labels, weight = pseudo_labels(self.teacher(state.teacher_image), self.pseudo_threshold, *self.psweight_ignore)
        state.pseudo_labels, state.pseudo_weights = labels, weight
        masks = class_mix_masks(ys, self.class_mix_classes)
        images, mixed_labels, mixed_weights = class_mix(xs, ys, xt, labels, weight, masks)
        images = strong_augment(images, self.input_normalization, *self.jitter, blur=self.blur,
                                jitter_operator=self.jitter_operator)
        if xs.is_contiguous(memory_format=torch.channels_last) and not xs.is_contiguous():
            images = images.contiguous(memory_format=torch.channels_last)
        state.mixed = self.segmentor.forward_all(images)
        state.mixed_labels, state.mixed_weights = mixed_labels, mixed_weights
        return state

    def source_ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One level's source CE, averaged as ``source_ce_mean`` says."""
        if self.source_ce_mean == "valid" or self.class_weights is not None:
            return super().source_ce(logits, labels)
        every_pixel = torch.ones(labels.shape, device=labels.device)  # ignored pixels' CE is 0
        return pixel_weighted_ce(logits, labels, every_pixel, align_corners=self.align_corners)

    def generator_losses(self, state: StepState) -> dict[str, torch.Tensor]:
        """Source CE (+ aux) and the pixel-weighted mixed CE (+ aux)."""
        assert state.mixed is not None and state.mixed_labels is not None and state.mixed_weights is not None
        losses = self.segmentation_loss(state)
        w, ac = self.class_weights if self.mix_class_weights else None, self.align_corners
        losses["mix"] = self.mix_weight * pixel_weighted_ce(state.mixed.logits, state.mixed_labels,
                                                            state.mixed_weights, weight=w, align_corners=ac)
        if state.mixed.aux_logits is not None:
            losses["mix_aux"] = self.mix_weight * self.seg_aux_weight * pixel_weighted_ce(
                state.mixed.aux_logits, state.mixed_labels, state.mixed_weights, weight=w, align_corners=ac)
        return losses

    def after_optimizer_step(self, step: int) -> None:
        """EMA of the teacher on the (synchronised) student weights after optimiser step ``step``."""
        self.teacher.update(self.segmentor, step)
