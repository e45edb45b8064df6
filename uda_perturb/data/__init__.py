"""Datasets (registry ``DATASETS``), label maps, transforms and the synthetic default data."""
from . import camvid, camvid_rendered, cityscapes, gta5, synthetic, synthia  # noqa: F401  (registers the readers)
from .base import DatasetInfo, PairedSegmentationDataset, pixel_counts
from .label_maps import IGNORE
from .synthetic import SYNTHETIC_CLASSES, SyntheticRoadScenes
from .transforms import build_transforms

__all__ = ["DatasetInfo", "IGNORE", "PairedSegmentationDataset", "SYNTHETIC_CLASSES", "SyntheticRoadScenes",
           "build_transforms", "pixel_counts"]
