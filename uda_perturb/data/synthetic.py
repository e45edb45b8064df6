"""Procedural two-domain road scenes: the embedded default data of the demo and the tests.

Every scene has long-tailed classes (large road / sky / building regions; thin poles, small signs and
people) and is rendered in one of two styles: ``source`` (bright day, clean) or ``target`` (dusk: dark,
low-contrast, colour cast, class colours shifted, heavy sensor noise). The layout statistics are the same
in both domains, so the shift is purely one of appearance, like day -> dusk. Deterministic per
``(seed, domain, index)``; generated on the fly, nothing is stored.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..registry import DATASETS
from .base import DatasetInfo, Transform
from .transforms import transform_item

SYNTHETIC_CLASSES = ("road", "sidewalk", "building", "sky", "vegetation", "car", "pole", "sign", "person")
SYNTHETIC_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (70, 130, 180), (107, 142, 35),
                     (0, 0, 142), (153, 153, 153), (220, 220, 0), (220, 20, 60))
SYNTHETIC_TAIL = ("pole", "sign", "person")
ROAD, SIDEWALK, BUILDING, SKY, VEG, CAR, POLE, SIGN, PERSON = range(9)

# Base colours (RGB, 0-1) per class and domain; the target shifts some hues as well as the light.
_COLOURS = {
    "source": np.array([[0.45, 0.43, 0.47], [0.72, 0.66, 0.60], [0.62, 0.52, 0.45], [0.55, 0.72, 0.95],
                        [0.25, 0.55, 0.20], [0.75, 0.15, 0.15], [0.35, 0.35, 0.38], [0.95, 0.80, 0.10],
                        [0.20, 0.30, 0.70]]),
    "target": np.array([[0.40, 0.40, 0.46], [0.60, 0.60, 0.64], [0.50, 0.48, 0.52], [0.85, 0.55, 0.40],
                        [0.30, 0.40, 0.22], [0.20, 0.25, 0.60], [0.45, 0.42, 0.40], [0.90, 0.45, 0.15],
                        [0.55, 0.25, 0.45]]),
}
_DOMAINS = ("source", "target")
TARGET_STYLES = ("dusk", "swapped")
# ``swapped``: the target paints some classes in another class's source colour (road <-> sidewalk, car <-> person),
# so colour alone misleads a source model while shape, place and texture still tell the classes apart
_SWAP = np.array([SIDEWALK, ROAD, BUILDING, SKY, VEG, PERSON, POLE, SIGN, CAR])


def _paint_layout(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Class-index map of one random street scene."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lab = np.full((h, w), SKY, dtype=np.uint8)
    horizon = rng.uniform(0.35, 0.5) * h
    for _ in range(rng.integers(2, 6)):  # buildings along the horizon
        x0, bw = rng.uniform(-0.1, 0.95) * w, rng.uniform(0.1, 0.35) * w
        top = horizon - rng.uniform(0.1, 0.35) * h
        lab[(yy >= top) & (yy < horizon + 2) & (xx >= x0) & (xx < x0 + bw)] = BUILDING
    for _ in range(rng.integers(1, 4)):  # trees
        cx, cy, r = rng.uniform(0, w), horizon - rng.uniform(0, 0.12) * h, rng.uniform(0.05, 0.12) * h
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (yy < horizon + 2)] = VEG
    depth = np.clip((yy - horizon) / max(h - horizon, 1.0), 0, 1)  # 0 at horizon, 1 at the bottom
    vx = rng.uniform(0.4, 0.6) * w
    ground = yy >= horizon
    road = ground & (np.abs(xx - vx) < depth * 0.6 * w + 1)
    lab[ground] = SIDEWALK
    lab[road] = ROAD
    scale = w / 128.0
    for _ in range(rng.integers(0, 4)):  # cars on the road
        d = rng.uniform(0.15, 0.9)
        y1 = horizon + d * (h - horizon)
        cw = max(3.0, d * 0.3 * w)
        cx = vx + rng.uniform(-0.45, 0.45) * d * 0.6 * w * 2
        lab[(yy >= y1 - 0.55 * cw) & (yy < y1) & (np.abs(xx - cx) < cw / 2)] = CAR
    for _ in range(rng.integers(1, 5)):  # poles on the sidewalk, some with a sign
        d = rng.uniform(0.2, 0.9)
        side = rng.choice([-1, 1])
        px = vx + side * (d * 0.6 * w + rng.uniform(2, 10) * scale)
        y1 = horizon + d * (h - horizon)
        top = horizon - rng.uniform(0.1, 0.3) * h
        pw = max(1.0, rng.uniform(0.6, 1.6) * scale * (0.5 + d))
        lab[(yy >= top) & (yy < y1) & (np.abs(xx - px) < pw / 2)] = POLE
        if rng.random() < 0.6:
            s = max(1.5, rng.uniform(1.5, 3.5) * scale * (0.5 + d))
            lab[(np.abs(yy - top - s) < s) & (np.abs(xx - px) < s)] = SIGN
    for _ in range(rng.integers(0, 5)):  # people on the sidewalk
        d = rng.uniform(0.2, 0.95)
        side = rng.choice([-1, 1])
        px = vx + side * (d * 0.6 * w + rng.uniform(1, 14) * scale)
        y1 = horizon + d * (h - horizon)
        ph = max(4.0, rng.uniform(8, 14) * scale * (0.4 + d))
        lab[(((yy - (y1 - ph / 2)) / (ph / 2)) ** 2 + ((xx - px) / (ph / 6)) ** 2) < 1] = PERSON
    return lab


def _render(rng: np.random.Generator, lab: np.ndarray, domain: str, style: str = "dusk") -> np.ndarray:
    """RGB image (H x W x 3, 0-1) for a layout in the given domain's style (``style``: the target's)."""
    h, w = lab.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = _COLOURS["source"][_SWAP] if domain == "target" and style == "swapped" else _COLOURS[domain]
    colours = base * rng.uniform(0.85, 1.15, size=(len(SYNTHETIC_CLASSES), 1))
    img = colours[lab].astype(np.float32)
    # class textures, identical in both domains: windows, tiles, foliage, a sky gradient
    tex = np.zeros((h, w), np.float32)
    tex += (lab == BUILDING) * 0.12 * ((np.sin(xx * 1.3) > 0.3) & (np.sin(yy * 1.1) > 0.3))
    tex += (lab == SIDEWALK) * 0.08 * ((xx.astype(int) % 6 == 0) | (yy.astype(int) % 4 == 0))
    tex += (lab == VEG) * rng.normal(0, 0.12, (h, w)).astype(np.float32)
    tex += (lab == SKY) * (yy / h * 0.25)
    img += tex[..., None]
    if domain == "source":
        img = img + rng.normal(0, 0.02, img.shape)
    elif style == "swapped":  # evening light: darker, a warm cast, more noise
        img = 0.7 * np.clip(img, 0, 1) + np.array([0.05, 0.02, 0.0])
        img = img + rng.normal(0, 0.04, img.shape)
    else:  # dusk: darker, lower contrast, bluish cast, sensor noise
        img = 0.55 * np.clip(img, 0, 1) ** 1.6 + np.array([0.02, 0.03, 0.09])
        img = img + rng.normal(0, 0.06, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


class SyntheticRoadScenes(Dataset):
    """``length`` procedural scenes of ``size`` (H, W) in ``domain`` (``"source"`` or ``"target"``).

    Items match the real-data readers: ``{"image", "label", "name"}``. ``seed`` selects an independent set
    of scenes (use different seeds for train and test splits).
    """

    def __init__(self, domain: str = "source", size: Sequence[int] = (96, 128), length: int = 200,
                 seed: int = 0, transform: Optional[Transform] = None, target_style: str = "dusk") -> None:
        if domain not in _DOMAINS:
            raise DataError(f"synthetic domain must be one of {_DOMAINS}, got {domain!r}")
        if target_style not in TARGET_STYLES:
            raise DataError(f"synthetic target_style must be one of {TARGET_STYLES}, got {target_style!r}")
        self.target_style = target_style
        if length < 1:
            raise DataError(f"length must be positive, got {length}")
        self.domain, self.size, self.length, self.seed = domain, (int(size[0]), int(size[1])), length, seed
        self.transform = transform
        self.info = DatasetInfo("synthetic", SYNTHETIC_CLASSES, SYNTHETIC_PALETTE)

    def __len__(self) -> int:
        return self.length

    def read_label(self, index: int) -> torch.Tensor:
        """Item ``index``'s label before any transform (as the real-data readers' ``read_label``)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        return torch.from_numpy(_paint_layout(np.random.default_rng([self.seed, index]), *self.size).astype(np.int64))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        lab = _paint_layout(np.random.default_rng([self.seed, index]), *self.size)
        img = _render(np.random.default_rng([self.seed, index, 1 + _DOMAINS.index(self.domain)]), lab, self.domain,
                      self.target_style)
        image = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        label = torch.from_numpy(lab.astype(np.int64))
        image, out_label, extras = transform_item(self.transform, image, label)
        assert out_label is not None
        return {"image": image, "label": out_label, "name": f"{self.domain}_{self.seed}_{index:05d}", **extras}


@DATASETS.register("synthetic")
def synthetic(root: Optional[str] = None, split: str = "train", transform: Optional[Transform] = None,
              domain: str = "source", size: Sequence[int] = (96, 128), length: Optional[int] = None,
              seed: Optional[int] = None, target_style: str = "dusk") -> SyntheticRoadScenes:
    """Registry entry. Each (split, domain) draws its own scene layouts (so source and target training scenes
    are unpaired) unless ``seed`` is given; the same seed gives the same layouts in both styles.
    ``target_style``: ``dusk`` (dark, low contrast, bluish, noisy, some class hues changed) or ``swapped``
    (evening light, and road/sidewalk and car/person painted in each other's day colours).
    ``root`` is ignored (nothing on disk)."""
    if split not in ("train", "test", "val"):
        raise DataError(f"synthetic split must be 'train', 'val' or 'test', got {split!r}")
    default_seed = {"train": 0, "val": 2, "test": 1}[split] + (100 if domain == "target" else 0)
    default_len = 400 if split == "train" else 100
    return SyntheticRoadScenes(domain, size, length or default_len, default_seed if seed is None else seed,
                               transform, target_style)
