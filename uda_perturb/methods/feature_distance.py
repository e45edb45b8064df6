"""DAFormer's ImageNet feature distance (Hoyer et al., CVPR 2022) as an add-on for any method (``imnet_fd``).

Reproduces ``calc_feat_dist`` / ``masked_feat_dist`` of lhoyer/DAFormer ``mmseg/models/uda/dacs.py`` and
``downscale_label_ratio`` of ``mmseg/utils/utils.py``: the L2 distance, per feature position, between the
student's last backbone stage on the source batch and that of a frozen ImageNet-pretrained copy (eval mode),
averaged over the positions whose downscaled source label is one of ``classes`` (all positions when
``classes`` is None), times ``lambda_fd``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import IGNORE_INDEX
from ..models.weights import load_segmentor_weights
from ..registry import ADDONS, BACKBONES
from .base import StepState, UDAMethod


def downscale_label_ratio(labels: torch.Tensor, factor: int, min_ratio: float, num_classes: int,
                          ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``B x H x W`` labels -> ``B x H//factor x W//factor``: the majority label of each ``factor x factor``
    block (ignored pixels count as a class of their own), ignored where that majority is the ignore label or
    holds less than ``min_ratio`` of the block (DAFormer's scale-min-ratio pooling)."""
    if factor <= 1:
        return labels.clone()
    lab = labels.long().clone()
    lab[lab == ignore_index] = num_classes
    onehot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()
    ratio, out = F.avg_pool2d(onehot, kernel_size=factor).max(dim=1)
    out[out == num_classes] = ignore_index
    out[ratio < min_ratio] = ignore_index
    return out


def masked_feature_distance(student: torch.Tensor, frozen: torch.Tensor,
                            mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over positions (those where ``mask``, ``B x h x w``, is true) of ``||student - frozen||_2`` over
    channels; 0 with a graph when the mask selects nothing (DAFormer's mean of an empty set is NaN)."""
    dist = torch.norm(student.float() - frozen.float(), p=2, dim=1)
    if mask is not None:
        dist = dist[mask]
    return dist.mean() if dist.numel() else student.sum() * 0.0


@ADDONS.register("imnet_fd")
class ImageNetFeatureDistance(nn.Module):
    """Keep the student's source features near a frozen ImageNet-pretrained copy of its backbone.

    Args:
        lambda_fd: loss weight (DAFormer 0.005).
        classes: train ids whose pixels count (DAFormer: Cityscapes' thing classes
            ``[6, 7, 11, 12, 13, 14, 15, 16, 17, 18]``; CamVid-11's are ``[6, 8, 9, 10]``: SignSymbol, Car,
            Pedestrian, Bicyclist); ``None`` (DAFormer's base config) averages over every position.
        scale_min_ratio: a feature position keeps its block's majority label only when that label covers at
            least this share of the block (DAFormer 0.75).

    The frozen copy holds the backbone's ImageNet weights by the route they came: the registry's pretrained
    weights (``pretrained``/``weights`` in the backbone options), then, when ``model.weights`` loaded an
    ImageNet initialisation afterwards (a DeepLab init or a torchvision checkpoint), exactly those tensors.
    A warm start from a segmentation checkpoint is not ImageNet: the copy keeps the ImageNet weights the
    backbone was built with (DAFormer's student starts from ImageNet, so there the two coincide). Without
    ImageNet weights by either route it is refused. The copy is built when the add-on is attached (under a
    forked RNG, so that exact resumes are unaffected) and is not part of the state dict.
    """

    def __init__(self, lambda_fd: float = 0.005, classes: Optional[Sequence[int]] = None,
                 scale_min_ratio: float = 0.75) -> None:
        super().__init__()
        if lambda_fd < 0 or not 0.0 <= scale_min_ratio <= 1.0:
            raise ValueError(f"imnet_fd needs lambda_fd >= 0 and scale_min_ratio in [0, 1], got {lambda_fd} and "
                             f"{scale_min_ratio}")
        self.lambda_fd, self.scale_min_ratio = lambda_fd, scale_min_ratio
        self.classes = None if classes is None else [int(c) for c in classes]
        self._frozen: list[nn.Module] = []  # a list, so that the copy is neither a submodule nor saved

    def check(self, method: UDAMethod) -> None:
        """Build the frozen copy; refuse backbones without ImageNet weights or without a registry name."""
        backbone = method.segmentor.backbone
        if self.classes is not None and method.segmentor.num_classes is not None:
            bad = [c for c in self.classes if not 0 <= c < method.segmentor.num_classes]
            if bad:
                raise ConfigError(f"imnet_fd classes {bad} are not train ids of a {method.segmentor.num_classes}-"
                                  "class model")
        self._frozen = [self.imagenet_copy(backbone)]

    @staticmethod
    def imagenet_copy(backbone: nn.Module) -> nn.Module:
        """A frozen (eval, no gradients) copy of ``backbone`` holding its ImageNet weights (see the class)."""
        spec = getattr(backbone, "build_spec", None)
        if spec is None:
            raise ConfigError("imnet_fd needs a backbone built by name (build_segmentor / model.backbone), to "
                              "build its frozen ImageNet copy")
        init = getattr(backbone, "pretrained_weights", None)
        with torch.random.fork_rng(devices=[]):
            net = BACKBONES.build(spec[0], **spec[1])
        if init is not None:
            holder = nn.Module()
            holder.backbone = net
            load_segmentor_weights(holder, init)
        elif getattr(net, "input_normalization", None) is None:
            raise ConfigError(f"imnet_fd needs a backbone with ImageNet weights; {spec[0]!r} was built without "
                              "them (set pretrained/weights in model.backbone_options, or model.weights to an "
                              "ImageNet checkpoint)")
        for p in net.parameters():
            p.requires_grad_(False)
        return net.eval()

    def frozen_backbone(self, like: torch.Tensor) -> nn.Module:
        """The frozen ImageNet copy, on ``like``'s device."""
        assert self._frozen, "check() builds the frozen copy when the add-on is attached"
        if next(self._frozen[0].parameters()).device != like.device:
            self._frozen[0] = self._frozen[0].to(like.device)
        return self._frozen[0]

    def forward(self, method: UDAMethod, state: StepState) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """``{"imnet_fd": lambda_fd * distance}`` on the source batch, and the share of positions it covers."""
        assert state.source_batch is not None, "imnet_fd reads the source images from the step's batches"
        image = state.source_batch["image"]
        net = self.frozen_backbone(image)
        with torch.no_grad():
            frozen = net(image)["out"].detach()
        # the encoder's last stage (DAFormer's feat[-1]); G's output when G is the encoder alone
        enc = getattr(state.source, "encoder_features", None)
        student = enc if enc is not None else state.source.features
        mask = None
        if self.classes is not None:
            labels = state.labels
            factor = labels.shape[-1] // student.shape[-1]
            small = downscale_label_ratio(labels, factor, self.scale_min_ratio, method.num_classes)
            if small.shape[-2:] != student.shape[-2:]:
                small = F.interpolate(small[:, None].float(), size=student.shape[-2:], mode="nearest")[:, 0].long()
            mask = torch.isin(small, torch.tensor(self.classes, device=small.device))
        loss = self.lambda_fd * masked_feature_distance(student, frozen, mask)
        share = 1.0 if mask is None else float(mask.float().mean())
        return {"imnet_fd": loss}, {"imnet_fd_share": share}
