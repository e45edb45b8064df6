"""SYNTHIA-RAND-CITYSCAPES: ``RGB/*.png`` and ``GT/LABELS/*.png`` (16-bit, class id in channel 0)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DataError
from ..registry import DATASETS
from .base import DatasetInfo, PairedSegmentationDataset, Transform, require_dir
from .label_maps import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    SYNTHIA13_CLASSES,
    SYNTHIA13_PALETTE,
    SYNTHIA16_CLASSES,
    SYNTHIA16_PALETTE,
    SYNTHIA_13,
    SYNTHIA_16,
    SYNTHIA_19,
)

_MODES = {
    19: (SYNTHIA_19, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
    16: (SYNTHIA_16, SYNTHIA16_CLASSES, SYNTHIA16_PALETTE),
    13: (SYNTHIA_13, SYNTHIA13_CLASSES, SYNTHIA13_PALETTE),
}


@DATASETS.register("synthia")
def synthia(root: str, split: str = "all", transform: Optional[Transform] = None,
            num_classes: int = 16, strict_labels: bool = False, strict_sizes: bool = False,
            skip_missing: bool = False) -> PairedSegmentationDataset:
    """SYNTHIA with 16 classes (ADVENT/DADA: report mIoU16 and mIoU13), 13 (AdaptSegNet: train 13 directly)
    or 19 (BDL-style). Raw ids outside the chosen map's classes become 255.
    Real-data quirks are handled as the reference loaders do: label ids outside the map become ignore (255)
    and a label whose size differs from its image is resized to it (nearest), each counted and warned about
    once (``strict_labels`` / ``strict_sizes`` raise instead); missing image/label pairs are listed in one
    error at construction, or dropped with ``skip_missing``.
    """
    if num_classes not in _MODES:
        raise DataError(f"synthia num_classes must be one of {sorted(_MODES)}, got {num_classes}")
    mapping, classes, palette = _MODES[num_classes]
    root_p = Path(root)
    images = sorted(require_dir(root_p / "RGB", "synthia images").glob("*.png"))
    lab_dir = require_dir(root_p / "GT" / "LABELS", "synthia labels")
    labels = [lab_dir / p.name for p in images]
    info = DatasetInfo(f"synthia-{num_classes}", classes, palette)
    return PairedSegmentationDataset(info, images, labels, mapping, transform, label_channel=0, lut_size=65536,
                                     strict_labels=strict_labels, strict_sizes=strict_sizes, skip_missing=skip_missing)
