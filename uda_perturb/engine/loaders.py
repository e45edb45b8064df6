"""Endless, exactly resumable data streams.

The item order and every augmentation are a pure function of ``(seed, position in the stream)``: the
sampler yields ``(index, sample_seed)`` pairs and the dataset wrapper seeds torch's RNG per sample. So a
resumed run sees the same batches as an uninterrupted one, with any number of workers, and ranks of a
distributed job read disjoint interleaved parts of the same stream.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DatasetConfig
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
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            order = torch.randperm(self.length, generator=g) if self.shuffle else torch.arange(self.length)
            yield int(order[offset]), (self.seed * 1_000_003 + pos) % (2**63)
            pos += self.world_size


class SeededItems(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is produced under ``torch.manual_seed(seed)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def build_dataset(cfg: DatasetConfig, train: bool) -> Dataset:
    """Instantiate a configured dataset with its transforms (random ones only when ``train``)."""
    t = cfg.transforms
    transform = build_transforms(size=t.size, crop=t.crop if train else None, scale=t.scale if train else None,
                                 flip=t.flip and train, photometric=t.photometric and train, normalize=t.normalize)
    return DATASETS.build(cfg.name, root=cfg.root, split=cfg.split, transform=transform, **cfg.options)


def stream(dataset: Dataset, batch_size: int, seed: int, start: int, info: DistInfo,
           num_workers: int = 0) -> Iterator[dict]:
    """An endless iterator of batches beginning at batch ``start`` of this rank's part of the stream."""
    sampler = InfiniteSampler(len(dataset), seed, start * batch_size, info.rank, info.world_size)  # type: ignore
    loader = DataLoader(SeededItems(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        drop_last=True, persistent_workers=num_workers > 0)
    return iter(loader)


def eval_loader(dataset: Dataset, batch_size: int, info: DistInfo, num_workers: int = 0) -> DataLoader:
    """Sequential loader over this rank's share of an evaluation set (every item exactly once overall)."""
    indices = list(range(info.rank, len(dataset), info.world_size))  # type: ignore[arg-type]
    subset = torch.utils.data.Subset(dataset, indices)
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)

