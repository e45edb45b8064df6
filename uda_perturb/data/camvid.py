"""CamVid in the SegNet layout (``train/ trainannot/ ... train.txt``), filtered by split and sequence."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import DataError
from ..registry import DATASETS
from .base import DatasetInfo, PairedSegmentationDataset, Transform
from .label_maps import CAMVID_11, CAMVID_CLASSES, CAMVID_PALETTE

DAY_SEQUENCES = ("0006R0", "0016E5", "Seq05VD")
DUSK_SEQUENCES = ("0001TP",)


def frame_number(path: str) -> int:
    """The video frame number in a CamVid file name (``0001TP_006690.png`` -> 6690, ``Seq05VD_f00120`` -> 120)."""
    digits = "".join(c for c in Path(path).stem.rsplit("_", 1)[-1] if c.isdigit())
    return int(digits) if digits else -1


@DATASETS.register("camvid")
def camvid(root: str, split: Union[str, Sequence[str]] = "train", transform: Optional[Transform] = None,
           sequences: Optional[Sequence[str]] = None, labelled: bool = True,
           frames: Optional[Sequence[int]] = None,
           exclude_frames: Optional[Sequence[int]] = None) -> PairedSegmentationDataset:
    """CamVid, 11 classes (index 11 "Unlabelled" -> 255).

    ``split`` is one list-file name or several (``["train", "val"]``); ``sequences`` keeps only frames whose
    file name starts with one of the given sequence prefixes (``["0001TP"]`` = the dusk frames); ``frames:
    [first, last]`` keeps the frame numbers in that range (``0001TP_006690`` is frame 6690), e.g. the protocol's
    adaptation frames ``[6690, 7860]`` and held-out evaluation frames ``[7890, 8520]``; ``exclude_frames: [first,
    last]`` drops the frame numbers in that range (a held-out clip and a margin around it).
    """
    for key, rng in (("frames", frames), ("exclude_frames", exclude_frames)):
        if rng is not None and (len(rng) != 2 or rng[0] > rng[1]):
            raise DataError(f"camvid: {key} must be [first, last] with first <= last, got {list(rng)}")
    root_p = Path(root)
    splits = [split] if isinstance(split, str) else list(split)
    images, labels = [], []
    for s in splits:
        list_path = root_p / f"{s}.txt"
        if not list_path.is_file():
            raise FileNotFoundError(f"camvid: split list not found: {list_path}")
        for n, line in enumerate(list_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"camvid: {list_path}:{n}: expected 'image label', got {line!r}")
            img, lab = parts
            if sequences and not any(Path(img).name.startswith(q) for q in sequences):
                continue
            if frames is not None and not frames[0] <= frame_number(img) <= frames[1]:
                continue
            if exclude_frames is not None and exclude_frames[0] <= frame_number(img) <= exclude_frames[1]:
                continue
            images.append(root_p / img)
            labels.append(root_p / lab if labelled else None)
    if not images:
        raise FileNotFoundError(f"camvid: no frames in split(s) {splits} match sequences {list(sequences or [])}")
    info = DatasetInfo("camvid", CAMVID_CLASSES, CAMVID_PALETTE)
    return PairedSegmentationDataset(info, images, labels, CAMVID_11, transform)
