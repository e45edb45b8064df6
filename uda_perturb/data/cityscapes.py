"""Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine/<split>/<city>/*_gtFine_labelIds.png``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DataError
from ..registry import DATASETS
from .base import DatasetInfo, PairedSegmentationDataset, Transform, require_dir
from .label_maps import (
    CITYSCAPES_13,
    CITYSCAPES_16,
    CITYSCAPES_19,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    SYNTHIA13_CLASSES,
    SYNTHIA13_PALETTE,
    SYNTHIA16_CLASSES,
    SYNTHIA16_PALETTE,
)

_MODES = {
    19: (CITYSCAPES_19, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
    16: (CITYSCAPES_16, SYNTHIA16_CLASSES, SYNTHIA16_PALETTE),
    13: (CITYSCAPES_13, SYNTHIA13_CLASSES, SYNTHIA13_PALETTE),
}


@DATASETS.register("cityscapes")
def cityscapes(root: str, split: str = "train", transform: Optional[Transform] = None, num_classes: int = 19,
               labelled: bool = True, strict_labels: bool = False, strict_sizes: bool = False,
               skip_missing: bool = False) -> PairedSegmentationDataset:
    """Cityscapes with labelIds mapped to 19 train ids (or the 16/13-class SYNTHIA protocol).

    ``labelled=False`` reads images only (the unlabelled target of UDA training).
    Real-data quirks are handled as the reference loaders do: label ids outside the map become ignore (255)
    and a label whose size differs from its image is resized to it (nearest), each counted and warned about
    once (``strict_labels`` / ``strict_sizes`` raise instead); missing image/label pairs are listed in one
    error at construction, or dropped with ``skip_missing``.
    """
    if num_classes not in _MODES:
        raise DataError(f"cityscapes num_classes must be one of {sorted(_MODES)}, got {num_classes}")
    mapping, classes, palette = _MODES[num_classes]
    root_p = Path(root)
    img_dir = require_dir(root_p / "leftImg8bit" / split, "cityscapes images")
    images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
    labels = None
    if labelled:
        lab_dir = require_dir(root_p / "gtFine" / split, "cityscapes labels")
        labels = [lab_dir / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
                  for p in images]
    info = DatasetInfo(f"cityscapes-{num_classes}", classes, palette)
    return PairedSegmentationDataset(info, images, labels, mapping, transform, strict_labels=strict_labels,
                                     strict_sizes=strict_sizes, skip_missing=skip_missing)
