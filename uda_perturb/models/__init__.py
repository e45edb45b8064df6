"""Backbones, heads, discriminators and the G/F-split ``Segmentor``."""
from . import backbones, discriminators, heads, timm_backbone  # noqa: F401  (registers the built-ins)
from .backbones import Backbone
from .discriminators import FCDiscriminator, PixelDiscriminator, discriminator_input
from .segmentor import Segmentor, SegmentorOutput, build_segmentor
from .torchvision_split import TorchvisionSplit, split_torchvision
from .weights import load_weights

__all__ = ["Backbone", "FCDiscriminator", "PixelDiscriminator", "Segmentor", "SegmentorOutput",
           "TorchvisionSplit", "build_segmentor", "discriminator_input", "load_weights", "split_torchvision"]
