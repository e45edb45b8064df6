"""Confusion-matrix segmentation metrics: per-class IoU, mIoU (nan-mean over present classes), pixel
accuracy, class-subset mIoU (SYNTHIA 16 / 13), accumulated over batches and over DDP ranks."""
from __future__ import annotations

import json
import math
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from .losses import IGNORE_INDEX


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all ranks (on the backend's device, returned on CPU) when ``torch.distributed`` is
    initialised; ``t`` itself otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return t
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = t.to(device)
    dist.all_reduce(t)
    return t.cpu()


class ConfusionMatrix:
    """Accumulates ``hist[gt, pred]`` over every pixel whose ground truth is in ``[0, num_classes)``
    (so the ignore index drops out), exactly as AdaptSegNet/ADVENT's ``fast_hist``."""

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.hist = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and ground-truth class maps of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in shape")
        pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        valid = (target >= 0) & (target < self.num_classes)
        bad = valid & ((pred < 0) | (pred >= self.num_classes))
        if bool(bad.any()):
            raise ValueError(f"predictions hold class ids outside [0, {self.num_classes})")
        k = self.num_classes
        self.hist += torch.bincount(k * target[valid] + pred[valid], minlength=k * k).view(k, k)

    def reset(self) -> None:
        """Clear the histogram."""
        self.hist.zero_()

    def all_reduce(self) -> None:
        """Sum the histogram over ranks when ``torch.distributed`` is initialised."""
        self.hist = sum_over_ranks(self.hist)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both ground truth and prediction."""
        h = self.hist.double().numpy()
        inter = np.diag(h)
        union = h.sum(0) + h.sum(1) - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, inter / union, np.nan)

    def miou(self, subset: Optional[Sequence[int]] = None) -> float:
        """NaN-mean IoU, optionally over a subset of class indices (e.g. the 13 of the 16 SYNTHIA classes)."""
        iou = self.iou()
        if subset is not None:
            iou = iou[list(subset)]
        return float(np.nanmean(iou)) if not np.all(np.isnan(iou)) else float("nan")

    def pixel_accuracy(self) -> float:
        """Share of valid pixels predicted correctly."""
        total = int(self.hist.sum())
        return float(self.hist.diag().sum()) / total if total else float("nan")

    def as_dict(self, subsets: Optional[Mapping[str, Sequence[int]]] = None) -> dict:
        """Per-class IoU (percent), mIoU, pixel accuracy and named subset mIoUs, JSON-ready."""
        out = {"iou": {n: _pct(v) for n, v in zip(self.class_names, self.iou())},
               "miou": _pct(self.miou()), "pixel_accuracy": _pct(self.pixel_accuracy())}
        for name, idx in (subsets or {}).items():
            out[f"miou_{name}"] = _pct(self.miou(idx))
        return out

    def to_markdown(self, title: str = "") -> str:
        """One-row per-class IoU table, percent to one decimal, as the literature reports it."""
        iou = self.iou()
        head = "| " + " | ".join(self.class_names) + " | mIoU |"
        sep = "|" + "---|" * (self.num_classes + 1)
        row = "| " + " | ".join(_fmt(v) for v in iou) + f" | {_fmt(self.miou())} |"
        return "\n".join(([f"**{title}**", ""] if title else []) + [head, sep, row])

    def to_json(self) -> str:
        """:meth:`as_dict` as JSON text."""
        return json.dumps(self.as_dict(), indent=2)


class EntropyMeter:
    """Mean normalised prediction entropy (``-sum p log p / log K`` per pixel, averaged over pixels): a
    label-free confidence measure on unlabelled target data (lower = more confident, not necessarily right)."""

    def __init__(self) -> None:
        self.total = torch.zeros(2, dtype=torch.float64)  # [sum of per-pixel entropies, pixel count]

    def update(self, probs: torch.Tensor) -> None:
        """Add ``B x K x H x W`` class probabilities."""
        p = probs.detach().double().clamp_min(1e-12)
        ent = -(p * p.log()).sum(1) / math.log(probs.shape[1])
        self.total += torch.tensor([float(ent.sum()), float(ent.numel())], dtype=torch.float64)

    def all_reduce(self) -> None:
        """Sum over ranks when ``torch.distributed`` is initialised."""
        self.total = sum_over_ranks(self.total)

    def mean(self) -> float:
        """Mean entropy in [0, 1]; NaN before any update."""
        return float(self.total[0] / self.total[1]) if self.total[1] > 0 else float("nan")


def _pct(v: float) -> Optional[float]:
    return None if v != v else round(100.0 * float(v), 2)


def _fmt(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


def subset_indices(class_names: Sequence[str], names: Sequence[str]) -> list[int]:
    """Indices of ``names`` within ``class_names`` (KeyError naming an unknown class)."""
    missing = [n for n in names if n not in class_names]
    if missing:
        raise KeyError(f"classes {missing} are not among {list(class_names)}")
    return [list(class_names).index(n) for n in names]


__all__ = ["ConfusionMatrix", "IGNORE_INDEX", "subset_indices"]
