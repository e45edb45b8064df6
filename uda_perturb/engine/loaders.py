"""Endless, exactly resumable data streams.

The item order and every augmentation are a pure function of ``(seed, position in the stream)``: the
sampler yields ``(index, sample_seed)`` pairs and the dataset wrapper seeds torch's RNG per sample. So a
resumed run sees the same batches as an uninterrupted one, with any number of workers, and ranks of a
distributed job read disjoint interleaved parts of the same stream.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..class_balance import label_areas, per_image_class_pixels
from ..config import DatasetConfig, RareClassSamplingConfig, TransformConfig
from ..data.rare_class_sampling import RareClassSampler, crop_thresholds, image_thresholds
from ..data.transforms import build_transforms
from ..registry import DATASETS
from .distributed import DistInfo


class InfiniteSampler(Sampler):
    """Epoch after epoch of seeded permutations, starting at stream position ``start``; rank ``r`` of ``w``
    takes positions ``r, r + w, ...``."""

    def __init__(self, length: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        self.length, self.seed, self.start = length, seed, start
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start * self.world_size + self.rank
        while True:
            epoch, offset = divmod(pos, self.length)
            # modulo 2**63: the same value as before for every seed below 2**63 / 100003, and no overflow above it
            g = torch.Generator().manual_seed((self.seed * 100003 + epoch) % (2**63))
            order = torch.randperm(self.length, generator=g) if self.shuffle else torch.arange(self.length)
            yield int(order[offset]), (self.seed * 1_000_003 + pos) % (2**63)
            pos += self.world_size


def redraw_seed(seed: int, j: int) -> int:
    """The seed of re-draw ``j`` (1, 2, ...) of the item drawn with ``seed``: mixed so that it is no other
    stream position's sample seed (``seed + j`` would be position ``pos + j``'s, repeating its crop)."""
    return (seed * 0x9E3779B97F4A7C15 + j * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (2**63)


class SeededItems(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is produced under ``torch.manual_seed(seed)``.

    A key ``(index, seed, cls)`` (rare-class sampling) re-draws the item's random transforms with the seeds
    :func:`redraw_seed` ``(seed, 1), (seed, 2), ...`` (at most ``redraws`` times, DAFormer's 10) while its label
    holds no more than ``min_class_pixels`` (one value, or one per index) pixels of class ``cls``."""

    def __init__(self, dataset: Dataset, min_class_pixels: Union[float, Sequence[float]] = 0.0,
                 redraws: int = 10) -> None:
        self.dataset, self.redraws = dataset, redraws
        self.min_class_pixels = min_class_pixels

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _item(self, index: int, seed: int) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]

    def __getitem__(self, key: tuple) -> dict:
        index, seed, cls = (*key, -1) if len(key) == 2 else key
        item = self._item(index, seed)
        limit = self.min_class_pixels
        limit = float(limit if isinstance(limit, (int, float)) else limit[index])
        if cls >= 0 and limit > 0:
            for j in range(1, self.redraws + 1):
                if int((item["label"] == cls).sum()) > limit:
                    break
                item = self._item(index, redraw_seed(seed, j))
        return item


def build_dataset(cfg: DatasetConfig, train: bool, key: str = "data.*") -> Dataset:
    """Instantiate a configured dataset with its transforms (random ones only when ``train``). ``key`` is the
    config key of ``cfg`` (``data.source``...), named when its files cannot be found."""
    t = cfg.transforms
    transform = build_transforms(size=t.size, crop=t.crop if train else None, scale=t.scale if train else None,
                                 flip=t.flip and train, photometric=t.photometric and train, normalize=t.normalize,
                                 interpolation=t.interpolation, cat_max_ratio=t.cat_max_ratio)
    try:
        return DATASETS.build(cfg.name, root=cfg.root, split=cfg.split, transform=transform, **cfg.options)
    except FileNotFoundError as exc:
        if cfg.root is None:
            raise
        where = Path(cfg.root)
        hint = (f"{key}.root is {cfg.root!r}, which resolves to {where.resolve()} from the current folder"
                + ("" if where.is_dir() else " and does not exist") + f"; set it with --set {key}.root=PATH")
        raise FileNotFoundError(f"{exc} ({hint})") from None


def stream(dataset: Dataset, batch_size: int, seed: int, start: int, info: DistInfo,
           num_workers: int = 0, rare_class_sampling: Optional[RareClassSamplingConfig] = None,
           num_classes: Optional[int] = None, transforms: Optional[TransformConfig] = None) -> Iterator[dict]:
    """An endless iterator of batches beginning at batch ``start`` of this rank's part of the stream; with
    ``rare_class_sampling`` the items are drawn by DAFormer's rare-class sampling, their crops re-drawn when
    ``transforms`` crop (without a crop a re-draw would only re-flip the same pixels)."""
    sampler: Sampler
    items = SeededItems(dataset)
    if rare_class_sampling is not None:
        rcs = rare_class_sampling
        if num_classes is None:
            raise ValueError("rare-class sampling needs num_classes")
        counts = per_image_class_pixels(dataset, num_classes)
        areas = label_areas(dataset)
        sampler = RareClassSampler(counts, seed, start * batch_size, info.rank, info.world_size,
                                   rcs.temperature, image_thresholds(areas, rcs.min_pixels, rcs.min_pixels_scale))
        if transforms is not None and transforms.crop is not None:
            limits = crop_thresholds(areas, transforms.size, rcs.min_pixels, rcs.min_crop_ratio)
            items = SeededItems(dataset, limits.tolist())
    else:
        sampler = InfiniteSampler(len(dataset), seed, start * batch_size, info.rank, info.world_size)  # type: ignore
    # its own generator: creating the iterator must not draw from the global RNG, which methods use in their
    # steps (ClassMix, augmentation) and which a resume restores from the checkpoint
    loader = DataLoader(items, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        drop_last=True, persistent_workers=num_workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    return iter(loader)


def eval_loader(dataset: Dataset, batch_size: int, info: DistInfo, num_workers: int = 0) -> DataLoader:
    """Sequential loader over this rank's share of an evaluation set (every item exactly once overall)."""
    indices = list(range(info.rank, len(dataset), info.world_size))  # type: ignore[arg-type]
    subset = torch.utils.data.Subset(dataset, indices)
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)

