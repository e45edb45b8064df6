"""Whole-image inference and evaluation as in AdaptSegNet/ADVENT: resize the input to ``eval_size``,
one forward pass (main head), logits upsampled bilinearly to the label size (with the network's
``align_corners``), argmax; optional flip and multi-scale averaging of softmax scores."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..classifier_modules import align_corners_of
from ..losses import upsample
from ..metrics import ConfusionMatrix, EntropyMeter


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, out_size: Sequence[int],
                   eval_size: Optional[Sequence[int]] = None, flip: bool = False,
                   scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Class scores ``B x K x H x W`` at ``out_size``: mean softmax over scales (x flip when asked)."""
    base = tuple(eval_size) if eval_size else tuple(images.shape[-2:])
    align_corners = align_corners_of([model])  # the network's convention (torchvision's, mmseg's heads: False)
    total = None
    for s in scales:
        size = (max(1, round(base[0] * s)), max(1, round(base[1] * s)))
        x = images if size == tuple(images.shape[-2:]) else F.interpolate(images, size=size, mode="bilinear",
                                                                            align_corners=False)
        views = [(x, False)] + ([(x.flip(-1), True)] if flip else [])
        for view, flipped in views:
            split = cast(Any, model)  # a Segmentor or TorchvisionSplit exposes features/classify
            logits = split.classify(split.features(view)) if hasattr(model, "classify") else model(view)
            prob = upsample(logits.float(), tuple(out_size), align_corners).softmax(1)
            prob = prob.flip(-1) if flipped else prob
            total = prob if total is None else total + prob
    assert total is not None
    return total


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[dict], num_classes: int, class_names: Optional[Sequence[str]] = None,
             eval_size: Optional[Sequence[int]] = None, flip: bool = False, scales: Sequence[float] = (1.0,),
             device: torch.device | str = "cpu", autocast_dtype: Optional[torch.dtype] = None,
             progress: Optional[Callable[[Iterable], Iterable]] = None,
             on_batch: Optional[Callable[[dict, torch.Tensor], None]] = None,
             entropy: Optional[EntropyMeter] = None) -> ConfusionMatrix:
    """Accumulate a confusion matrix over ``loader`` (items with ``image`` and ``label``) in eval mode;
    the model's train/eval mode is restored afterwards and the histogram is summed across DDP ranks.
    ``entropy``, when given, also accumulates the mean prediction entropy (needs no labels)."""
    cm = ConfusionMatrix(num_classes, class_names)
    was_training = model.training
    model.eval()
    device = torch.device(device)
    try:
        for batch in (progress(loader) if progress else loader):
            images = batch["image"].to(device)
            labels = batch["label"]
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                scores = predict_logits(model, images, labels.shape[-2:], eval_size, flip, scales)
            pred = scores.argmax(1).cpu()
            if entropy is not None:
                entropy.update(scores / scores.sum(1, keepdim=True))  # flip/scale averages are sums
            cm.update(pred, labels)
            if on_batch is not None:
                on_batch(batch, pred)
    finally:
        model.train(was_training)
    cm.all_reduce()
    if entropy is not None:
        entropy.all_reduce()
    return cm
