"""A dataset of (image file, label file) pairs with a label map, shared by the real-data readers."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError
from .io import map_label, read_label_raw, read_rgb, unknown_ids
from .label_maps import lookup_table
from .transforms import transform_item

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
    """Items are dicts ``{"image": 3xHxW float, "label": HxW int64 (255 = ignore), "name": str}`` (and
    ``image_unjittered`` when the transforms jitter photometrically, see ``Compose.apply``).

    ``labels=None`` (or a ``None`` entry) gives an all-255 label, for unlabelled data. Every file is checked
    to exist at construction, so a broken dataset fails before training starts, naming the file.
    """

    def __init__(self, info: DatasetInfo, images: Sequence[Path], labels: Optional[Sequence[Optional[Path]]],
                 label_map: dict[int, int], transform: Optional[Transform] = None,
                 label_channel: Optional[int] = None, lut_size: int = 256, strict_labels: bool = True,
                 strict_sizes: bool = True, skip_missing: bool = False) -> None:
        if not images:
            raise FileNotFoundError(f"{info.name}: no images found")
        if labels is not None and len(labels) != len(images):
            raise DataError(f"{info.name}: {len(images)} images but {len(labels)} labels")
        images, labels = _drop_missing(info.name, list(images), None if labels is None else list(labels),
                                       skip_missing)
        self.info = info
        self.strict_labels, self.strict_sizes = strict_labels, strict_sizes
        # frames whose label held unknown ids / had another size than its image (lenient mode), this process
        self.quirks = {"unknown_ids": 0, "resized_labels": 0}
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
        raw = read_label_raw(path, self.label_channel)
        if not self.strict_labels:
            bad = unknown_ids(raw, self.lut)
            if len(bad):
                self._quirk("unknown_ids", f"label {path} holds ids {bad[:10].tolist()} outside the label map; "
                                           "they are ignored (255) as in the reference loaders "
                                           "(options: {strict_labels: true} raises instead)")
        return map_label(raw, self.lut, path, strict=self.strict_labels)

    def _quirk(self, kind: str, message: str) -> None:
        """Count a tolerated data quirk; warn on its first occurrence in this dataset."""
        self.quirks[kind] += 1
        if self.quirks[kind] == 1:
            warnings.warn(f"{self.info.name}: {message}; later frames are counted in dataset.quirks", stacklevel=3)

    def __getitem__(self, index: int) -> dict:
        image = read_rgb(self.images[index])
        label = self.read_label(index)
        if label is not None and label.shape != image.shape[-2:] and not self.strict_sizes:
            self._quirk("resized_labels", f"label {self.labels[index] if self.labels else None} is "
                                          f"{tuple(label.shape)} but its image {tuple(image.shape[-2:])}; labels are "
                                          "resized to their image (nearest) as the references do "
                                          "(options: {strict_sizes: true} raises instead)")
            label = F.interpolate(label[None, None].float(), size=tuple(image.shape[-2:]),
                                  mode="nearest-exact")[0, 0].long()
        if label is not None and label.shape != image.shape[-2:]:
            where = self.labels[index] if self.labels else None
            raise DataError(f"{self.info.name}: label {where} is {tuple(label.shape)} but image "
                            f"{self.images[index]} is {tuple(image.shape[-2:])}")
        image, label, extras = transform_item(self.transform, image, label)
        if label is None:
            label = torch.full(image.shape[-2:], 255, dtype=torch.int64)
        return {"image": image, "label": label, "name": self.images[index].name, **extras}


def _drop_missing(name: str, images: list, labels: Optional[list], skip: bool) -> tuple[list, Optional[list]]:
    """Check every listed file exists; name the missing pairs (first few and the count) in one message, or
    with ``skip`` drop them and warn once."""
    pairs = list(zip(images, labels if labels is not None else [None] * len(images)))
    missing = [(i, lab) for i, lab in pairs if not Path(i).is_file() or (lab is not None and not Path(lab).is_file())]
    if not missing:
        return images, labels
    shown = ", ".join(str(i if not Path(i).is_file() else lab) for i, lab in missing[:3])
    what = f"{len(missing)} of {len(pairs)} image/label pairs have a missing file (first: {shown})"
    if not skip:
        raise FileNotFoundError(f"{name}: {what}; fix the copy, or pass options: {{skip_missing: true}} to "
                                "train on the complete pairs")
    warnings.warn(f"{name}: {what}; skipping them (skip_missing)", stacklevel=3)
    kept = [(i, lab) for i, lab in pairs if (i, lab) not in missing]
    return [i for i, _ in kept], None if labels is None else [lab for _, lab in kept]


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
