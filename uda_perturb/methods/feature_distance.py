"""DAFormer's ImageNet feature distance (Hoyer et al., CVPR 2022) as an add-on for any method (``imnet_fd``).

Reproduces ``calc_feat_dist`` / ``masked_feat_dist`` of lhoyer/DAFormer ``mmseg/models/uda/dacs.py`` and
``downscale_label_ratio`` of ``mmseg/utils/utils.py``: the L2 distance, per feature position, between the
student's last backbone stage on the source batch and that of a frozen ImageNet-pretrained copy (eval mode),
averaged over the positions whose downscaled source label is one of ``classes`` (all positions when
``classes`` is None), times ``lambda_fd``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import IGNORE_INDEX
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

    The frozen copy is built from the backbone's registry name and options (so it holds the pretrained
    weights, not a warm start loaded afterwards), on first use, under a forked RNG so that exact resumes are
    unaffected; it is not part of the state dict. Backbones built without pretrained weights are refused.
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
        """Refuse backbones without pretrained weights or without a recorded registry name."""
        backbone = method.segmentor.backbone
        spec = getattr(backbone, "build_spec", None)
        if spec is None:
            raise ConfigError("imnet_fd needs a backbone built by name (build_segmentor / model.backbone), to "
                              "build its frozen ImageNet copy")
        if getattr(backbone, "input_normalization", None) is None:
            raise ConfigError(f"imnet_fd needs a backbone with pretrained weights; {spec[0]!r} "
                              "was built without them (set pretrained/weights in model.backbone_options)")
        if self.classes is not None and method.segmentor.num_classes is not None:
            bad = [c for c in self.classes if not 0 <= c < method.segmentor.num_classes]
            if bad:
                raise ConfigError(f"imnet_fd classes {bad} are not train ids of a {method.segmentor.num_classes}-"
                                  "class model")

    def frozen_backbone(self, like: torch.Tensor, spec: Optional[tuple[str, dict[str, Any]]]) -> nn.Module:
        """The frozen pretrained copy, built on first use on ``like``'s device."""
        if not self._frozen:
            assert spec is not None, "check() refuses backbones without a build_spec"
            with torch.random.fork_rng(devices=[]):
                net = BACKBONES.build(spec[0], **spec[1])
            for p in net.parameters():
                p.requires_grad_(False)
            self._frozen.append(net.to(like.device).eval())
        return self._frozen[0]

    def forward(self, method: UDAMethod, state: StepState) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """``{"imnet_fd": lambda_fd * distance}`` on the source batch, and the share of positions it covers."""
        assert state.source_batch is not None, "imnet_fd reads the source images from the step's batches"
        image = state.source_batch["image"]
        net = self.frozen_backbone(image, getattr(method.segmentor.backbone, "build_spec", None))
        with torch.no_grad():
            frozen = net(image)["out"].detach()
        student = state.source.features
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
