"""``camvid_rendered``: CamVid's label maps rendered as synthetic images (:mod:`.label_renderer`), a synthetic
source with real geometry for adapting to real CamVid, built from data this machine has."""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError
from ..registry import DATASETS
from .base import DatasetInfo, PairedSegmentationDataset, Transform
from .camvid import camvid
from .label_maps import IGNORE
from .label_renderer import UNLABELLED, render_label_map
from .transforms import transform_item


class RenderedCamVid(Dataset):
    """Every labelled frame of a CamVid selection, rendered in ``styles`` styles from its label map alone.

    Item ``i`` is frame ``i % frames`` in style ``i // frames``. An image depends only on ``(seed, frame name,
    style)``, which seed everything drawn for it (its palette of class colours included), so items are the same
    in every process, run and thread count. Labels are the frames' real labels (Unlabelled -> 255). Images are
    rendered at the label's full resolution and kept as 8-bit RGB, as a rendered dataset's files would be, in a
    per-process cache (``cache``; about 0.5 MB per item at CamVid's 480 x 360), then go through the same
    transforms as real frames. ``render_stride`` k > 1 (the earlier default, 2) renders from every k-th label
    pixel and upsamples bilinearly: cheaper, but thin classes (poles, signs, people) are drawn as other classes
    and the image sits half a pixel off its label.
    """

    def __init__(self, frames: PairedSegmentationDataset, styles: int = 2, seed: int = 0,
                 transform: Optional[Transform] = None, render_stride: int = 1, cache: bool = True) -> None:
        if styles < 1:
            raise DataError(f"camvid_rendered: styles must be at least 1, got {styles}")
        if render_stride < 1:
            raise DataError(f"camvid_rendered: render_stride must be at least 1, got {render_stride}")
        self.frames, self.styles, self.seed, self.transform = frames, int(styles), int(seed), transform
        self.render_stride, self.cache = int(render_stride), cache
        self.info = DatasetInfo("camvid_rendered", frames.info.classes, frames.info.palette)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.frames) * self.styles

    def _frame(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rendered frames")
        return index % len(self.frames), index // len(self.frames)

    def read_label(self, index: int) -> torch.Tensor:
        """Item ``index``'s label before any transform (the real frame's)."""
        label = self.frames.read_label(self._frame(index)[0])
        assert label is not None
        return label

    def render(self, index: int) -> torch.Tensor:
        """Item ``index``'s image (3 x H x W in [0, 1], 8-bit levels) before any transform."""
        return self._render(self.read_label(index), index)

    def _render(self, label: torch.Tensor, index: int) -> torch.Tensor:
        """The image of item ``index`` from its (mapped) label, so the label file is decoded once per item."""
        stored = self._cache.get(index)
        if stored is None:
            stored = self._draw(label, index)
            if self.cache:
                self._cache[index] = stored
        return stored.float() / 255.0

    def _draw(self, label: torch.Tensor, index: int) -> torch.Tensor:
        """Render item ``index`` as ``3 x H x W`` uint8."""
        f, style = self._frame(index)
        raw = label.numpy().astype(np.int32)
        raw[raw == IGNORE] = UNLABELLED  # CAMVID_11 is the identity but for Unlabelled: back to the raw ids
        k = self.render_stride
        key = zlib.crc32(self.frames.images[f].name.encode())  # a stable per-frame seed (hash() is salted)
        img = render_label_map(raw[::k, ::k], np.random.default_rng([self.seed, key, style]))
        image = torch.from_numpy(img).permute(2, 0, 1)
        if k > 1:
            image = F.interpolate(image[None], size=raw.shape, mode="bilinear", align_corners=False)[0].clamp_(0, 1)
        return (image * 255.0).round().to(torch.uint8).contiguous()

    def __getitem__(self, index: int) -> dict:
        label = self.read_label(index)
        image = self._render(label, index)
        image, out_label, extras = transform_item(self.transform, image, label)
        assert out_label is not None
        f, style = self._frame(index)
        return {"image": image, "label": out_label, "name": f"{Path(self.frames.images[f]).stem}_style{style}",
                **extras}


@DATASETS.register("camvid_rendered")
def camvid_rendered(root: str, split: Union[str, Sequence[str]] = "train", transform: Optional[Transform] = None,
                    sequences: Optional[Sequence[str]] = None, frames: Optional[Sequence[int]] = None,
                    exclude_frames: Optional[Sequence[int]] = None, styles: int = 2, seed: int = 0,
                    render_stride: int = 1, cache: bool = True) -> RenderedCamVid:
    """CamVid's labelled frames (same ``split`` / ``sequences`` / ``frames`` / ``exclude_frames`` selection as
    ``camvid``) rendered from their label maps in ``styles`` styles each; ``seed`` picks another set of
    renderings. The source of the ``camvid_rendered2real`` recipe: 0016E5's label maps, adapted to the real
    0006R0 frames, scored on real Seq05VD, so no image of a training sequence is ever seen in both forms."""
    selection = camvid(root, split, None, sequences=sequences, labelled=True, frames=frames,
                       exclude_frames=exclude_frames)
    return RenderedCamVid(selection, styles, seed, transform, render_stride, cache)
