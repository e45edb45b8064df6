"""Class weights for the supervised source loss: median-frequency balancing (Eigen & Fergus 2015, used by
SegNet on CamVid), so that thin, rare classes (poles, bicyclists) are not drowned by road and sky."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .losses import IGNORE_INDEX

WeightSpec = Union[str, Sequence[float], None]
SCHEMES = ("median_frequency",)


def per_image_class_pixels(dataset: Dataset, num_classes: int) -> np.ndarray:
    """``N x K`` pixel counts of each class in each item's label (ignore label skipped; unlabelled items count 0).

    Reads raw labels through ``dataset.read_label`` when the dataset has it (no image decoding), else items.
    """
    counts = np.zeros((len(dataset), num_classes), dtype=np.int64)  # type: ignore[arg-type]
    reader = getattr(dataset, "read_label", None)
    for i in range(len(counts)):
        if reader is not None:
            label = reader(i)
        else:  # items run the random transforms: never draw from the run's RNG (exact resumes replay it)
            with torch.random.fork_rng(devices=[]):
                label = dataset[i]["label"]
        if label is None:
            continue
        lab = torch.as_tensor(label).reshape(-1)
        lab = lab[lab != IGNORE_INDEX]
        if lab.numel() and int(lab.max()) >= num_classes:
            raise ValueError(f"label value {int(lab.max())} >= num_classes {num_classes} in item {i}")
        counts[i] = np.bincount(lab.numpy(), minlength=num_classes)
    return counts


def label_areas(dataset: Dataset) -> list[int]:
    """Pixels of each item's full-resolution label (``dataset.read_label`` when the dataset has it, else the
    item's label); 0 for unlabelled items."""
    reader = getattr(dataset, "read_label", None)
    areas = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        if reader is not None:
            label = reader(i)
        else:
            with torch.random.fork_rng(devices=[]):
                label = dataset[i]["label"]
        areas.append(0 if label is None else int(np.prod(np.shape(label))))
    return areas


def label_statistics(dataset: Dataset, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixel_count[c], pixels_of_images_containing[c])`` over the dataset's labels (ignore label skipped)."""
    per_image = per_image_class_pixels(dataset, num_classes).astype(np.float64)
    labelled = per_image.sum(axis=1, keepdims=True)
    return per_image.sum(axis=0), ((per_image > 0) * labelled).sum(axis=0)


def median_frequency_weights(counts: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``w_c = median(f) / f_c`` with ``f_c = counts_c / present_c``; classes never seen get weight 0."""
    seen = counts > 0
    if not seen.any():
        raise ValueError("median-frequency weights need at least one labelled pixel")
    freq = np.zeros_like(counts)
    freq[seen] = counts[seen] / present[seen]
    weights = np.zeros_like(counts)
    weights[seen] = np.median(freq[seen]) / freq[seen]
    return weights


def resolve_class_weights(spec: WeightSpec, dataset: Dataset, num_classes: int) -> Optional[torch.Tensor]:
    """The weight tensor for ``spec``: ``None``, ``"median_frequency"`` (computed from ``dataset``), or an
    explicit list of ``num_classes`` non-negative floats."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in SCHEMES:
            raise ValueError(f"unknown class weighting {spec!r}; choose one of {SCHEMES} or give a list of floats")
        return torch.tensor(median_frequency_weights(*label_statistics(dataset, num_classes)), dtype=torch.float32)
    weights = torch.tensor([float(w) for w in spec], dtype=torch.float32)
    if weights.numel() != num_classes:
        raise ValueError(f"class_weights has {weights.numel()} entries but the model has {num_classes} classes")
    if bool((weights < 0).any()) or not bool((weights > 0).any()):
        raise ValueError("class_weights must be non-negative with at least one positive entry")
    return weights
