"""A dataset of (image file, label file) pairs with a label map, shared by the real-data readers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import map_label, read_label_raw, read_rgb
from .label_maps import lookup_table

Transform = Callable[[torch.Tensor, Optional[torch.Tensor]], tuple]


@dataclass(frozen=True)
class DatasetInfo:
    """What evaluation and plotting need to know about a dataset's classes."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class PairedSegmentationDataset(Dataset):
    """Items are dicts ``{"image": 3xHxW float, "label": HxW int64 (255 = ignore), "name": str}``.

    ``labels=None`` (or a ``None`` entry) gives an all-255 label, for unlabelled data. Every file is checked
    to exist at construction, so a broken dataset fails before training starts, naming the file.
    """

    def __init__(self, info: DatasetInfo, images: Sequence[Path], labels: Optional[Sequence[Optional[Path]]],
                 label_map: dict[int, int], transform: Optional[Transform] = None,
                 label_channel: Optional[int] = None, lut_size: int = 256) -> None:
        if not images:
            raise FileNotFoundError(f"{info.name}: no images found")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{info.name}: {len(images)} images but {len(labels)} labels")
        for path in list(images) + [p for p in (labels or []) if p is not None]:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{info.name}: missing file {path}")
        self.info = info
        self.images = [Path(p) for p in images]
        self.labels = [Path(p) if p is not None else None for p in labels] if labels is not None else None
        self.lut = lookup_table(label_map, lut_size)
        self.transform = transform
        self.label_channel = label_channel

    def __len__(self) -> int:
        return len(self.images)

    def read_label(self, index: int) -> Optional[torch.Tensor]:
        """Mapped train ids of item ``index`` (``None`` when unlabelled)."""
        path = self.labels[index] if self.labels is not None else None
        if path is None:
            return None
        return map_label(read_label_raw(path, self.label_channel), self.lut, path)

    def __getitem__(self, index: int) -> dict:
        image = read_rgb(self.images[index])
        label = self.read_label(index)
        if label is not None and label.shape != image.shape[-2:]:
            raise ValueError(f"{self.info.name}: label {self.labels[index]} is {tuple(label.shape)} but image "
                             f"{self.images[index]} is {tuple(image.shape[-2:])}")
        if self.transform is not None:
            image, label = self.transform(image, label)
        if label is None:
            label = torch.full(image.shape[-2:], 255, dtype=torch.int64)
        return {"image": image, "label": label, "name": self.images[index].name}


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise ``FileNotFoundError`` naming it."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder not found: {path}")
    return path


def pixel_counts(dataset: PairedSegmentationDataset) -> np.ndarray:
    """Pixels per class over the whole dataset (labels read without transforms)."""
    counts = np.zeros(dataset.info.num_classes, dtype=np.int64)
    for i in range(len(dataset)):
        lab = dataset.read_label(i)
        if lab is not None:
            v = lab[lab != 255].numpy()
            counts += np.bincount(v, minlength=len(counts))[: len(counts)]
    return counts
