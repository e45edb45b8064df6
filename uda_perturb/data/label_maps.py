"""Class names, palettes and raw-id -> train-id maps of every dataset, shipped with the package.

A map is a dict ``raw id -> train id``; raw ids mapped to 255 are ignored, raw ids absent from the map
are *errors* (a value outside the map means a corrupt or foreign label file, never a silent wrong label).
"""
from __future__ import annotations

import numpy as np

IGNORE = 255

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                      (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                      (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                      (0, 80, 100), (0, 0, 230), (119, 11, 32))
# Cityscapes labelIds (upstream labels.py) of the 19 evaluated classes, in trainId order.
_CS_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_19 = {raw: IGNORE for raw in range(34)}
CITYSCAPES_19.update({raw: train for train, raw in enumerate(_CS_LABEL_IDS)})

# 16-class protocol (SYNTHIA -> Cityscapes, valeoai/DADA): terrain, truck, train dropped.
_DROPPED_16 = {"terrain", "truck", "train"}
SYNTHIA16_CLASSES = tuple(c for c in CITYSCAPES_CLASSES if c not in _DROPPED_16)
SYNTHIA16_PALETTE = tuple(p for c, p in zip(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE) if c not in _DROPPED_16)
CITYSCAPES_16 = {raw: IGNORE for raw in range(34)}
CITYSCAPES_16.update({raw: SYNTHIA16_CLASSES.index(CITYSCAPES_CLASSES[t]) for t, raw in enumerate(_CS_LABEL_IDS)
                      if CITYSCAPES_CLASSES[t] not in _DROPPED_16})
# 13-class subset of the 16: wall, fence, pole dropped ("mIoU*").
SYNTHIA13_SUBSET = tuple(i for i, c in enumerate(SYNTHIA16_CLASSES) if c not in {"wall", "fence", "pole"})
SYNTHIA13_CLASSES = tuple(SYNTHIA16_CLASSES[i] for i in SYNTHIA13_SUBSET)
SYNTHIA13_PALETTE = tuple(SYNTHIA16_PALETTE[i] for i in SYNTHIA13_SUBSET)
CITYSCAPES_13 = {raw: (SYNTHIA13_SUBSET.index(t) if t in SYNTHIA13_SUBSET else IGNORE) if t != IGNORE else IGNORE
                 for raw, t in CITYSCAPES_16.items()}

# SYNTHIA-RAND-CITYSCAPES raw ids (channel 0 of GT/LABELS) -> class name; 0 void, 13 parking, 14 road-work,
# 22 lanemarking are ignored.
_SYNTHIA_RAW = {1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation", 7: "pole",
                8: "car", 9: "traffic sign", 10: "person", 11: "bicycle", 12: "motorcycle", 15: "traffic light",
                16: "terrain", 17: "rider", 18: "truck", 19: "bus", 20: "train", 21: "wall"}


def _synthia_map(classes: tuple[str, ...]) -> dict[int, int]:
    m = {raw: IGNORE for raw in range(23)}
    m.update({raw: classes.index(name) for raw, name in _SYNTHIA_RAW.items() if name in classes})
    return m


SYNTHIA_19 = _synthia_map(CITYSCAPES_CLASSES)
SYNTHIA_16 = _synthia_map(SYNTHIA16_CLASSES)
SYNTHIA_13 = _synthia_map(SYNTHIA13_CLASSES)

CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
CAMVID_11 = {i: i for i in range(11)}
CAMVID_11[11] = IGNORE  # Unlabelled
CAMVID_TAIL = ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """A LUT over raw values; entries absent from ``mapping`` hold -1 (flagged as errors by readers)."""
    lut = np.full(size, -1, dtype=np.int32)
    for raw, train in mapping.items():
        lut[raw] = train
    return lut
