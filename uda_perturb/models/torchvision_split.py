"""Split a torchvision segmentation model (DeepLabV3, FCN, LRASPP) into G and F without changing it."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn
from torchvision.models.segmentation import FCN, LRASPP, DeepLabV3

from ..classifier_modules import ALIGN_CORNERS_TAG
from ..losses import upsample

Features = Union[torch.Tensor, dict[str, torch.Tensor]]


class TorchvisionSplit(nn.Module):
    """Wraps a torchvision segmentation model so that ``classify(features(x))`` equals the model's
    ``"out"`` logits at feature resolution, and ``forward(x)`` equals ``model(x)["out"]``.

    DeepLabV3 / FCN: ``features`` is a tensor (the backbone's ``"out"``), ``classify`` is ``model.classifier``.
    LRASPP: its head reads two maps, so ``features`` is ``{"low", "high"}``; use ``classifier_for(features)``
    to get a tensor-to-logits callable on ``"high"`` for ``perturb_and_defend``.

    torchvision upsamples logits with ``align_corners=False``; the view tags its heads so, and ``perturb_and_defend``
    builds its pixel-size maps (D's input, the pixel losses) the same way whichever of the view's callables it gets.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, (DeepLabV3, FCN, LRASPP)):
            raise TypeError(f"expected a torchvision DeepLabV3, FCN or LRASPP model, got {type(model).__name__}")
        self.model = model
        self.is_lraspp = isinstance(model, LRASPP)
        for head in (self, model.classifier, getattr(model, "aux_classifier", None)):
            if head is not None:
                setattr(head, ALIGN_CORNERS_TAG, False)

    @property
    def classifier(self) -> nn.Module:
        """F as a module (for LRASPP it reads the two-map dict)."""
        return self.model.classifier

    @property
    def aux_classifier(self) -> Optional[nn.Module]:
        """The auxiliary classifier of a model built with ``aux_loss=True`` (it reads the backbone's ``"aux"``
        map, :meth:`aux_features`), else ``None``."""
        return getattr(self.model, "aux_classifier", None)

    def aux_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's ``"aux"`` map that :attr:`aux_classifier` reads (``aux_loss=True`` models only)."""
        if self.aux_classifier is None:
            raise ValueError("this torchvision model has no auxiliary classifier: build it with aux_loss=True")
        return self.model.backbone(x)["aux"]

    def both_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One backbone pass, both maps: ``{"out": ..., "aux": ...}`` (``"aux"`` only with ``aux_loss=True``)."""
        return dict(self.model.backbone(x))

    def features(self, x: torch.Tensor) -> Features:
        """G: the backbone output the original classifier reads."""
        feats = self.model.backbone(x)
        return feats if self.is_lraspp else feats["out"]

    def classify(self, features: Features) -> torch.Tensor:
        """F: the original classifier on ``features``."""
        return self.model.classifier(features)

    def classifier_for(self, features: Features):
        """A callable from the perturbable tensor to logits (LRASPP: the ``"high"`` map, ``"low"`` bound)."""
        if not self.is_lraspp:
            return self.model.classifier
        low = features["low"]  # type: ignore[index]
        return lambda high: self.model.classifier({"low": low, "high": high})

    def perturbable(self, features: Features) -> torch.Tensor:
        """The tensor an attack perturbs: the features themselves, or LRASPP's ``"high"`` map."""
        return features["high"] if self.is_lraspp else features  # type: ignore[index,return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``model(x)["out"]``: torchvision upsamples with ``align_corners=False`` (``perturb_and_defend`` follows the
        view's tag and does the same)."""
        return upsample(self.classify(self.features(x)), tuple(x.shape[-2:]), align_corners=False)


def split_torchvision(model: nn.Module) -> TorchvisionSplit:
    """G/F view of a torchvision segmentation model (the model itself is shared, not copied)."""
    return TorchvisionSplit(model)
