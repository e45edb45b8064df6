"""What attack objectives and defense losses may look at: one typed context per call."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .losses import IGNORE_INDEX, upsample
from .models.discriminators import DiscriminatorSpace

Classifier = Callable[[torch.Tensor], torch.Tensor]
Upsampler = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ObjectiveContext:
    """Inputs shared by every objective of one ``perturb_and_defend`` call.

    ``clean_logits`` are the detached predictions on the unperturbed features at feature resolution;
    ``output_size`` (label size) is where pixel losses are computed; ``labels`` is ``None`` for target data.
    ``class_weights`` (optional) are the weights the training uses for its supervised CE, so that the
    ``ce`` defense on source labels keeps the same class balance. ``pixel_weights`` (optional, with labels)
    weight each label pixel, as self-training does for pseudo-labels. ``upsampler`` (optional): the caller's own
    ``logits -> logits at pixel size`` (e.g. AdaptSegNet's ``interp`` module), used for every pixel-size map in
    place of bilinear upsampling with ``align_corners``, so that D sees exactly what the caller's loop trains it on.
    """

    classifier: Classifier
    domain: str
    clean_logits: torch.Tensor
    labels: Optional[torch.Tensor] = None
    discriminator: Optional[nn.Module] = None
    discriminator_input: DiscriminatorSpace = "softmax"
    output_size: Optional[tuple[int, int]] = None
    ignore_index: int = IGNORE_INDEX
    class_weights: Optional[torch.Tensor] = None  # per-class weights of label-based defense losses
    pixel_weights: Optional[torch.Tensor] = None  # B x H x W weights of the labels (self-training's mixed labels)
    align_corners: bool = True  # how logits are upsampled to pixel size (True: the DeepLab references)
    upsampler: Optional[Upsampler] = None  # the caller's own upsampling, replacing align_corners
    # the first step from the caller's graph: its clean logits and D's output on the maps built from them (with
    # their graphs), so that the discriminator objective backs through the caller's D forward instead of its own
    caller_logits: Optional[torch.Tensor] = None
    caller_discriminator_output: Optional[torch.Tensor] = None

    @property
    def pixel_size(self) -> tuple[int, int]:
        """Size at which pixel losses are computed: the labels', else ``output_size``, else the logits'."""
        if self.labels is not None:
            return tuple(self.labels.shape[-2:])  # type: ignore[return-value]
        if self.output_size is not None:
            return tuple(self.output_size)  # type: ignore[return-value]
        return tuple(self.clean_logits.shape[-2:])  # type: ignore[return-value]

    def upsample(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` at pixel size: the caller's ``upsampler`` when given (its output size checked against the
        labels' or ``output_size``), else bilinear to ``pixel_size`` with ``align_corners``."""
        if self.upsampler is None:
            return upsample(logits, self.pixel_size, self.align_corners)
        out = self.upsampler(logits)
        want = self.labels.shape[-2:] if self.labels is not None else self.output_size
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or (want is not None and
                                                                    tuple(out.shape[-2:]) != tuple(want)):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"upsample= returned {got}; it must map B x K x h x w logits to B x K x H x W at the "
                             f"pixel size {tuple(want) if want is not None else '(H, W)'}")
        return out

    def clean_at_pixels(self) -> torch.Tensor:
        """Clean logits upsampled to ``pixel_size`` (detached)."""
        return self.upsample(self.clean_logits).detach()

    def pseudo_labels(self, threshold: float = 0.0) -> torch.Tensor:
        """Argmax of the clean prediction; pixels whose max probability is below ``threshold`` are ignored."""
        prob = self.clean_at_pixels().float().softmax(dim=1)
        conf, label = prob.max(dim=1)
        if threshold > 0:
            label = torch.where(conf >= threshold, label, torch.full_like(label, self.ignore_index))
        return label
