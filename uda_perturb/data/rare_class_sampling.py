"""Rare-class sampling of source images (DAFormer, Hoyer et al. CVPR 2022): draw a class with probability
``softmax((1 - f_c) / T)`` over the source classes' pixel frequencies ``f_c``, then an image holding more than
``min_pixels`` of it, then (when the transforms crop) re-draw the crop up to 10 times until it holds at least
``min_pixels * min_crop_ratio`` pixels of that class. Defaults are DAFormer's: T = 0.01, 3000 pixels, 0.5.

Like :class:`~uda_perturb.engine.loaders.InfiniteSampler`, every draw is a pure function of
``(seed, stream position)``, so a resumed run sees the same images and crops.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import DataError


def class_probabilities(class_pixels: Sequence[float], temperature: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, p)`` over the classes that occur: ``p_c = softmax((1 - f_c) / T)`` with ``f_c`` the share of
    all labelled pixels that class ``c`` holds."""
    if temperature <= 0:
        raise DataError(f"rare-class sampling temperature must be positive, got {temperature}")
    n = np.asarray(class_pixels, dtype=np.float64)
    classes = np.flatnonzero(n > 0)
    if not len(classes):
        raise DataError("rare-class sampling needs labelled source pixels")
    f = n[classes] / n[classes].sum()
    z = (1.0 - f) / temperature
    p = np.exp(z - z.max())
    return classes, p / p.sum()


class RareClassSampler(Sampler):
    """Yields ``(index, sample_seed, class)`` for the rare-class-sampled stream (see the module docstring);
    rank ``r`` of ``w`` takes stream positions ``r, r + w, ...`` from ``start`` on."""

    def __init__(self, image_class_pixels: np.ndarray, seed: int, start: int = 0, rank: int = 0,
                 world_size: int = 1, temperature: float = 0.01, min_pixels: int = 3000) -> None:
        self.seed, self.start, self.rank, self.world_size = seed, start, rank, world_size
        classes, probs = class_probabilities(image_class_pixels.sum(axis=0), temperature)
        self.images_with = {int(c): np.flatnonzero(image_class_pixels[:, c] > min_pixels) for c in classes}
        keep = [i for i, c in enumerate(classes) if len(self.images_with[int(c)])]
        if not keep:
            raise DataError(f"rare-class sampling: no image holds more than {min_pixels} pixels of any class; "
                            "lower data.rare_class_sampling.min_pixels")
        # classes without an eligible image cannot be drawn (DAFormer asserts there is one)
        self.classes = classes[keep]
        self.probs = torch.tensor(probs[keep] / probs[keep].sum(), dtype=torch.float64)
        self.dropped = [int(c) for c in classes if not len(self.images_with[int(c)])]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        pos = self.start * self.world_size + self.rank
        while True:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + pos) % (2**63) + 7)
            c = int(self.classes[int(torch.multinomial(self.probs, 1, generator=g))])
            pool = self.images_with[c]
            index = int(pool[int(torch.randint(len(pool), (), generator=g))])
            yield index, (self.seed * 1_000_003 + pos) % (2**63), c
            pos += self.world_size
