"""``Segmentor``: a segmentation network split into a feature extractor G and a classifier F."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..classifier_modules import align_corners_of
from ..losses import upsample
from ..registry import BACKBONES, HEADS
from . import fusion_heads as _fusion_heads  # noqa: F401  (registers the daformer and segformer heads)
from . import mit as _mit  # noqa: F401  (registers mit_b0 ... mit_b5)
from .backbones import Backbone


@dataclass
class SegmentorOutput:
    """Everything one forward pass produces, at feature resolution (logits are not upsampled)."""

    features: torch.Tensor
    logits: torch.Tensor
    aux_features: Optional[torch.Tensor] = None
    aux_logits: Optional[torch.Tensor] = None
    # the encoder's last stage when G ends in a fusion (DAFormer's head): where ImageNet feature distance reads
    encoder_features: Optional[torch.Tensor] = None


class FusedBackbone(Backbone):
    """G of a fusion head (``daformer``, ``segformer``): the encoder (``body``) and the head's fusion, so that
    ``out`` is the fused map the classifier reads; ``encoder`` is the encoder's last stage, ``aux`` its third."""

    output_stride = 4

    def __init__(self, body: Backbone, fusion: nn.Module) -> None:
        super().__init__()
        self.body, self.fusion = body, fusion
        width: Any = fusion.out_channels
        self.out_channels, self.aux_channels = int(width), body.aux_channels
        self.input_normalization = body.input_normalization

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.body(x)
        return {"out": self.fusion([s[f"stage{i}"] for i in range(1, 5)]), "aux": s["aux"], "encoder": s["out"]}


class Segmentor(nn.Module):
    """G/F split model: ``features(x)`` (G), ``classify(f)`` (F), ``forward(x)`` (logits at input size).

    With ``aux_head`` (multi-level, as AdaptSegNet/ADVENT) a second classifier reads the backbone's
    earlier stage; ``forward_all`` returns both levels.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, aux_head: Optional[nn.Module] = None,
                 num_classes: Optional[int] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.num_classes = num_classes

    @property
    def classifier(self) -> nn.Module:
        """F: the module applied to ``features(x)``."""
        return self.head

    @property
    def align_corners(self) -> bool:
        """How this network's logits are upsampled to pixel size: what its classifier declares (``False`` for the
        fusion heads, as mmseg), else ``True`` (the DeepLab-v2 references). Losses and evaluation follow it."""
        return align_corners_of([self.head])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """G: the main feature map (the perturbation site)."""
        return self.backbone(x)["out"]

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """F: logits at feature resolution."""
        return self.head(features)

    def forward_all(self, x: torch.Tensor) -> SegmentorOutput:
        """Features and logits of both levels at feature resolution."""
        feats = self.backbone(x)
        out = SegmentorOutput(features=feats["out"], logits=self.head(feats["out"]),
                              encoder_features=feats.get("encoder"))
        if self.aux_head is not None:
            out.aux_features = feats["aux"]
            out.aux_logits = self.aux_head(feats["aux"])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main-head logits bilinearly upsampled to the input size (with :attr:`align_corners`)."""
        return upsample(self.classify(self.features(x)), tuple(x.shape[-2:]), self.align_corners)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(backbone_params, head_params)`` with ``requires_grad``; heads train at 10x lr in DeepLab-v2 (and in
        DAFormer, whose whole decode head does: a fusion moved into G counts as head here)."""
        fusion = getattr(self.backbone, "fusion", None)
        fused = {id(p) for p in fusion.parameters()} if fusion is not None else set()
        backbone = [p for p in self.backbone.parameters() if p.requires_grad and id(p) not in fused]
        heads = [p for p in self.head.parameters() if p.requires_grad]
        heads += [p for p in fusion.parameters() if p.requires_grad] if fusion is not None else []
        if self.aux_head is not None:
            heads += [p for p in self.aux_head.parameters() if p.requires_grad]
        return backbone, heads


FUSION_HEADS = ("daformer", "segformer")


def build_segmentor(head: str = "aspp_v2", backbone: str = "resnet101", num_classes: int = 19, *,
                    multi_level: bool = False, aux_head: Optional[str] = None,
                    backbone_kwargs: Optional[dict] = None, head_kwargs: Optional[dict] = None) -> Segmentor:
    """Assemble a ``Segmentor`` from registry names.

    ``build_segmentor("deeplabv2", backbone="resnet101", num_classes=19, multi_level=True)`` is the DeepLab-v2
    network of ADVENT (four ASPP branches summed; ``head_kwargs={"branches": 2}`` for AdaptSegNet's): the
    ``deeplabv2`` head name builds the ``aspp_v2`` head and, for ResNet-50/101/152, the Caffe DeepLab-v2 layout
    with BatchNorm affine frozen, unless ``backbone_kwargs`` sets ``layout`` / ``bn`` (``layout:
    "torchvision"`` for torchvision's dilated ResNet). ``aspp_v2`` builds the head alone on any backbone.
    """
    if head == "deeplabv2":
        head = "aspp_v2"
        if backbone in ("resnet50", "resnet101", "resnet152"):
            backbone_kwargs = {"layout": "deeplabv2", "bn": "affine_frozen", **(backbone_kwargs or {})}
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    g = BACKBONES.build(backbone, **(backbone_kwargs or {}))
    spec = (backbone, dict(backbone_kwargs or {}))  # how to rebuild the encoder (pretrained copies, imnet_fd)
    g.build_spec = spec
    stages = getattr(g, "stage_channels", None)
    f = HEADS.build(head, in_channels=stages if stages and head in FUSION_HEADS else g.out_channels,
                    num_classes=num_classes, **(head_kwargs or {}))
    if head in FUSION_HEADS:  # the fusion is G's, the classifier F: the perturbation lands on the fused map
        if multi_level:
            raise ValueError(f"the {head} head fuses every stage; it has no auxiliary level (multi_level: false)")
        parts: Any = f
        g = FusedBackbone(g, parts.fusion)
        g.build_spec = spec  # type: ignore[assignment]
        f = parts.classifier
    aux = None
    if multi_level:
        aux = HEADS.build(aux_head or head, in_channels=g.aux_channels, num_classes=num_classes,
                          **(head_kwargs or {}))
    return Segmentor(g, f, aux, num_classes=num_classes)
