"""GTA5: ``images/*.png`` and ``labels/*.png`` holding Cityscapes labelIds."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..registry import DATASETS
from .base import DatasetInfo, PairedSegmentationDataset, Transform, require_dir
from .label_maps import CITYSCAPES_19, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE


@DATASETS.register("gta5")
def gta5(root: str, split: str = "all", transform: Optional[Transform] = None,
         list_file: Optional[str] = None, strict_labels: bool = False, strict_sizes: bool = False,
         skip_missing: bool = False) -> PairedSegmentationDataset:
    """GTA5 with the Cityscapes 19-class map. ``list_file`` (one file name per line, as AdaptSegNet's
    ``train.txt``) selects images; without it every image in ``images/`` is used.
    Real-data quirks are handled as the reference loaders do: label ids outside the map become ignore (255)
    and a label whose size differs from its image is resized to it (nearest), each counted and warned about
    once (``strict_labels`` / ``strict_sizes`` raise instead); missing image/label pairs are listed in one
    error at construction, or dropped with ``skip_missing``.
    """
    root_p = Path(root)
    img_dir = require_dir(root_p / "images", "gta5 images")
    lab_dir = require_dir(root_p / "labels", "gta5 labels")
    if list_file:
        names = [ln.strip() for ln in Path(list_file).read_text().splitlines() if ln.strip()]
        images = [img_dir / n for n in names]
    else:
        images = sorted(img_dir.glob("*.png"))
    labels = [lab_dir / p.name for p in images]
    info = DatasetInfo("gta5", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)
    return PairedSegmentationDataset(info, images, labels, CITYSCAPES_19, transform, strict_labels=strict_labels,
                                     strict_sizes=strict_sizes, skip_missing=skip_missing)
