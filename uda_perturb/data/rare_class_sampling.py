"""Rare-class sampling of source images (DAFormer, Hoyer et al. CVPR 2022): draw a class with probability
``softmax((1 - f_c) / T)`` over the source classes' pixel frequencies ``f_c``, then an image holding more than
``min_pixels`` of it (DAFormer's count on GTA5's full-resolution labels, scaled to each image's label area unless
``min_pixels_scale: none``: :func:`image_thresholds`), then, when the transforms crop, re-draw the crop
up to 10 times (11 draws at most) while it holds no more than the crop threshold of that class. Defaults are
DAFormer's: T = 0.01, 3000 pixels, ``min_crop_ratio`` 0.5.

The crop threshold is ``min_pixels * min_crop_ratio`` training pixels at DAFormer's GTA5 training scale
(1914 x 1052 labels resized to 1280 x 720: 0.458 of the pixels); at another scale it is multiplied by this
run's share over that one, as MIC multiplies ``rcs_min_crop`` by 4 when it trains at twice the side. Unscaled,
1500 pixels at 120 x 160 (from CamVid's 480 x 360) is 8 % of the image: almost every rare-class sample would
spend all 11 draws.

Like :class:`~uda_perturb.engine.loaders.InfiniteSampler`, every draw is a pure function of
``(seed, stream position)``, so a resumed run sees the same images and crops.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import DataError

DAFORMER_TRAINING_SCALE = (1280 * 720) / (1914 * 1052)  # share of a GTA5 label's pixels DAFormer trains on
GTA5_LABEL_AREA = 1914 * 1052  # the label size DAFormer's min_pixels counts on
MIN_PIXELS_SCALES = ("label_area", "none")


def image_thresholds(label_areas: Sequence[int], min_pixels: int, mode: str = "label_area") -> np.ndarray:
    """Per image, how many pixels of a class it must hold to be drawn for that class: ``min_pixels`` as DAFormer
    counts it on GTA5's full-resolution labels, scaled by the image's label area over that (``label_area``), or
    as is (``none``). Unscaled on CamVid (480 x 360, 9% of a GTA5 label) Pole, SignSymbol, Pedestrian and
    Bicyclist kept 45, 55, 33 and 82 of 406 images while taking ~90% of the draws; scaled, 389, 362, 284, 175
    (``benchmarks/results/rare_class_eligibility_camvid_day2dusk.md``)."""
    if mode not in MIN_PIXELS_SCALES:
        raise DataError(f"rare-class sampling min_pixels_scale must be one of {MIN_PIXELS_SCALES}, got {mode!r}")
    areas = np.asarray(label_areas, dtype=np.float64)
    return min_pixels * (areas / GTA5_LABEL_AREA if mode == "label_area" else np.ones_like(areas))


def crop_thresholds(label_areas: Sequence[int], training_size: Optional[Sequence[int]], min_pixels: int,
                    min_crop_ratio: float) -> np.ndarray:
    """Per image, how many pixels of the sampled class a training crop must exceed: ``min_pixels *
    min_crop_ratio`` scaled by the image's training scale (the area of ``training_size``, the size images are
    resized to before cropping, over its label's full-resolution area; 1 without a resize) relative to
    DAFormer's (see the module docstring)."""
    areas = np.maximum(np.asarray(label_areas, dtype=np.float64), 1.0)
    scale = np.ones_like(areas) if training_size is None else float(training_size[0] * training_size[1]) / areas
    return min_pixels * min_crop_ratio * scale / DAFORMER_TRAINING_SCALE


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
                 world_size: int = 1, temperature: float = 0.01,
                 min_pixels: Union[float, np.ndarray] = 3000) -> None:
        """``min_pixels``: one threshold for every image, or one per image (:func:`image_thresholds`)."""
        self.seed, self.start, self.rank, self.world_size = seed, start, rank, world_size
        classes, probs = class_probabilities(image_class_pixels.sum(axis=0), temperature)
        limit = np.broadcast_to(np.asarray(min_pixels, dtype=np.float64), image_class_pixels.shape[:1])
        self.images_with = {int(c): np.flatnonzero(image_class_pixels[:, c] > limit) for c in classes}
        keep = [i for i, c in enumerate(classes) if len(self.images_with[int(c)])]
        if not keep:
            raise DataError(f"rare-class sampling: no image holds more than {float(limit.max()):g} pixels of any "
                            "class; lower data.rare_class_sampling.min_pixels")
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
