"""DACS (Tranheden et al., WACV 2021): self-training with a mean teacher and ClassMix, the training step
shared by DAFormer, HRDA and MIC. Defaults are those of the reference code (vikolss/DACS ``trainUDA.py``,
lhoyer/DAFormer ``mmseg/models/uda/dacs.py``); every departure is an option, off by default."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..losses import pixel_weighted_ce
from ..mixing import class_mix, class_mix_mask, strong_augment
from ..models.segmentor import Segmentor
from ..registry import METHODS
from .base import StepState, UDAMethod
from .mean_teacher import MeanTeacher


def pseudo_labels(teacher_logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, weight)``: the teacher's argmax and, at every pixel, the share of the batch's pixels whose
    confidence reaches ``threshold`` (DACS's single pseudo-label weight, ``B x H x W``)."""
    conf, labels = teacher_logits.float().softmax(dim=1).max(dim=1)
    share = (conf >= threshold).float().mean()
    return labels, share.expand_as(conf).clone()


@METHODS.register("dacs")
class DACS(UDAMethod):
    """Source CE on the student, plus ``mix_weight`` x the pixel-weighted CE of the student on ClassMix images
    (source classes pasted onto target images) against mixed labels (source labels + the EMA teacher's
    pseudo-labels on the target image, weighted by the share of confident teacher pixels, threshold 0.968).

    As in DAFormer's ``forward_train``: the teacher is in train mode with dropout off (its BatchNorm uses the
    target batch's statistics), its EMA covers parameters only, it labels the target image as the data
    pipeline gives it (DAFormer's pipelines have no photometric jitter: when the recipe jitters target batches,
    the teacher gets the same crop without the jitter), and the mixed CE carries no class weights.

    Args:
        alpha: EMA factor of the teacher (0.99, as DACS and DAFormer).
        pseudo_threshold: teacher confidence that counts a pixel as confident (0.968).
        color_jitter_strength, color_jitter_probability, blur: the strong augmentation of the mixed image.
        mix_class_weights: option of ours, off in both references: weight the mixed CE with the recipe's
            class weights too (normalised by their sum, as the source CE). With a weak teacher it puts most of
            the target loss on tail-class pseudo-labels that are mostly wrong.
        teacher_bn: ``"batch"`` (references) or ``"stored"`` (option: eval mode with the student's running
            statistics); see :class:`MeanTeacher`.
        teacher_jittered_input: option: the teacher labels the photometrically jittered target batch instead.
    """

    def __init__(self, segmentor: Segmentor, addons: Sequence[nn.Module] = (), seg_aux_weight: float = 0.1,
                 alpha: float = 0.99, pseudo_threshold: float = 0.968, mix_weight: float = 1.0,
                 color_jitter_strength: float = 0.2, color_jitter_probability: float = 0.2, blur: bool = True,
                 mix_class_weights: bool = False, teacher_bn: str = "batch",
                 teacher_jittered_input: bool = False) -> None:
        super().__init__(segmentor, addons, seg_aux_weight)
        self.teacher = MeanTeacher(segmentor, alpha, bn=teacher_bn)
        self.pseudo_threshold, self.mix_weight = pseudo_threshold, mix_weight
        self.jitter = (color_jitter_strength, color_jitter_probability)
        self.blur, self.mix_class_weights = blur, mix_class_weights
        self.teacher_jittered_input = teacher_jittered_input

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
        labels, weight = pseudo_labels(self.teacher(state.teacher_image), self.pseudo_threshold)
        state.pseudo_labels, state.pseudo_weights = labels, weight
        masks = torch.stack([class_mix_mask(y) for y in ys])
        images, mixed_labels, mixed_weights = class_mix(xs, ys, xt, labels, weight, masks)
        images = strong_augment(images, self.input_normalization, *self.jitter, blur=self.blur)
        if xs.is_contiguous(memory_format=torch.channels_last) and not xs.is_contiguous():
            images = images.contiguous(memory_format=torch.channels_last)
        state.mixed = self.segmentor.forward_all(images)
        state.mixed_labels, state.mixed_weights = mixed_labels, mixed_weights
        return state

    def generator_losses(self, state: StepState) -> dict[str, torch.Tensor]:
        """Source CE (+ aux) and the pixel-weighted mixed CE (+ aux)."""
        assert state.mixed is not None and state.mixed_labels is not None and state.mixed_weights is not None
        losses = self.segmentation_loss(state)
        w = self.class_weights if self.mix_class_weights else None
        losses["mix"] = self.mix_weight * pixel_weighted_ce(state.mixed.logits, state.mixed_labels,
                                                            state.mixed_weights, weight=w)
        if state.mixed.aux_logits is not None:
            losses["mix_aux"] = self.mix_weight * self.seg_aux_weight * pixel_weighted_ce(
                state.mixed.aux_logits, state.mixed_labels, state.mixed_weights, weight=w)
        return losses

    def after_optimizer_step(self, step: int) -> None:
        """EMA of the teacher on the (synchronised) student weights after optimiser step ``step``."""
        self.teacher.update(self.segmentor, step)
