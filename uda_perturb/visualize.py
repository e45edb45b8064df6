"""Colour-coded predictions, overlays and per-class IoU bar plots."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch


def colorize(label: torch.Tensor | np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """``H x W`` class map -> ``H x W x 3`` uint8 image; ignored pixels are black."""
    lab = label.cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[ignore_index] = 0
    return lut[lab.astype(np.int64).clip(0, 255)]


def overlay(image: np.ndarray, colour: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a uint8 RGB image with a colour map."""
    return (image.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).clip(0, 255).astype(np.uint8)


def iou_bar_plot(per_method: Mapping[str, Mapping[str, float]], path: str | Path, title: str = "",
                 errors: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """Grouped bar plot of per-class IoU (percent) for several methods; needs matplotlib (``.[plot]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(per_method)
    classes = list(next(iter(per_method.values())))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(8, len(classes) * 0.9), 4.5))
    x = np.arange(len(classes))
    colours = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    for i, m in enumerate(methods):
        vals = [np.nan if per_method[m][c] is None else per_method[m][c] for c in classes]
        err = [errors[m].get(c, 0) if errors and m in errors else 0 for c in classes]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, yerr=err, label=m, capsize=2, color=colours(i % 20))
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=30, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
