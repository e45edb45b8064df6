"""Joint image/label transforms on tensors. Images are ``3 x H x W`` floats in [0, 1] (before ``Normalize``);
labels are ``H x W`` int64 and are only ever resized with nearest neighbour. Randomness comes from torch's
generator, so a seeded run (and an exact resume) replays the same augmentations."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .label_maps import IGNORE

Label = Optional[torch.Tensor]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # TF/timm EfficientNet-Lite, Inception
NORMALIZATIONS = ("imagenet", "inception", "caffe", "none")
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)  # DeepLab-v2 checkpoints: BGR, 0-255, no scaling


INTERPOLATIONS = ("bilinear", "bicubic")


def _resize_pair(image: torch.Tensor, label: Label, size: tuple[int, int], mode: str) -> tuple[torch.Tensor, Label]:
    """Image: ``mode`` (bicubic antialiased when shrinking, as PIL's BICUBIC in the references); label: nearest
    at pixel centres (``nearest-exact``, PIL's NEAREST), so labels stay aligned with the image at any scale."""
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {mode!r}")
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    image = F.interpolate(image[None], size=size, mode=mode, align_corners=False,
                          antialias=mode == "bicubic" and shrink)[0]
    if mode == "bicubic":
        image = image.clamp_(0, 1)
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return image, label


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, label: Label = None) -> tuple[torch.Tensor, Label]:
        for t in self.transforms:
            image, label = t(image, label)
        return image, label

    def apply(self, image: torch.Tensor, label: Label = None) -> tuple[torch.Tensor, Label, dict]:
        """As ``__call__``, plus ``{"image_unjittered": ...}`` when the pipeline holds a
        :class:`PhotometricJitter`: the same image (same crop, scale and flip) with every step but the jitter.
        Self-training teachers label that image, as DACS/DAFormer's teachers see no photometric augmentation."""
        extras: dict = {}
        clean: Optional[torch.Tensor] = None
        for t in self.transforms:
            if isinstance(t, PhotometricJitter):
                clean = image
            elif clean is not None:
                clean, _ = t(clean, None)  # only label-free steps follow the jitter (normalisation)
            image, label = t(image, label)
        if clean is not None:
            extras["image_unjittered"] = clean
        return image, label, extras


class Resize:
    """Resize to ``(H, W)``; image bilinear (or bicubic, antialiased when shrinking), label nearest at pixel
    centres."""

    def __init__(self, size: Sequence[int], mode: str = "bilinear") -> None:
        if mode not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {mode!r}")
        self.size, self.mode = (int(size[0]), int(size[1])), mode

    def __call__(self, image: torch.Tensor, label: Label = None) -> tuple[torch.Tensor, Label]:
        return _resize_pair(image, label, self.size, self.mode)


class RandomScaleCrop:
    """Random rescale by a factor in ``scale`` then a random ``crop`` (padding labels with 255).

    ``cat_max_ratio`` (off by default): DAFormer's source crop rule (mmseg's ``RandomCrop(cat_max_ratio=0.75)``):
    while the crop's largest class holds ``cat_max_ratio`` or more of its labelled pixels, or it holds one class
    only, the crop window is drawn again, at most 10 more times (the last draw is kept)."""

    def __init__(self, crop: Sequence[int], scale: Sequence[float] = (0.75, 1.25),
                 interpolation: str = "bilinear", cat_max_ratio: Optional[float] = None) -> None:
        self.crop, self.scale = (int(crop[0]), int(crop[1])), (float(scale[0]), float(scale[1]))
        self.interpolation = interpolation
        if cat_max_ratio is not None and not 0.0 < cat_max_ratio <= 1.0:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.cat_max_ratio = cat_max_ratio

    def __call__(self, image: torch.Tensor, label: Label = None) -> tuple[torch.Tensor, Label]:
        s = self.scale[0] + float(torch.rand(())) * (self.scale[1] - self.scale[0])
        h, w = image.shape[-2:]
        image, label = _resize_pair(image, label, (max(1, round(h * s)), max(1, round(w * s))), self.interpolation)
        ch, cw = self.crop
        ph, pw = max(ch - image.shape[-2], 0), max(cw - image.shape[-1], 0)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph))
            if label is not None:
                label = F.pad(label, (0, pw, 0, ph), value=IGNORE)
        y, x = self._window(image)
        if label is not None and self.cat_max_ratio is not None and self.cat_max_ratio < 1.0:
            for _ in range(10):
                window = label[y:y + ch, x:x + cw]
                counts = torch.bincount(window[window != IGNORE].flatten().long())
                counts = counts[counts > 0]
                if len(counts) > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio:
                    break
                y, x = self._window(image)
        image = image[:, y:y + ch, x:x + cw]
        label = label[y:y + ch, x:x + cw] if label is not None else None
        return image, label

    def _window(self, image: torch.Tensor) -> tuple[int, int]:
        ch, cw = self.crop
        y = int(torch.randint(0, image.shape[-2] - ch + 1, ()))
        return y, int(torch.randint(0, image.shape[-1] - cw + 1, ()))


class RandomHorizontalFlip:
    """Flip image and label together with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, label: Label = None) -> tuple[torch.Tensor, Label]:
        if float(torch.rand(())) < self.p:
            image = image.flip(-1)
            label = label.flip(-1) if label is not None else None
        return image, label


class PhotometricJitter:
    """Brightness, contrast and gamma jitter (the honest baseline against illumination shifts).

    Each factor is drawn uniformly from ``[1 - x, 1 + x]``; gamma from ``[1 / (1 + g), 1 + g]``.
    """

    def __init__(self, brightness: float = 0.5, contrast: float = 0.4, gamma: float = 0.6) -> None:
        self.brightness, self.contrast, self.gamma = brightness, contrast, gamma

    @staticmethod
    def _uniform(lo: float, hi: float) -> float:
        return lo + float(torch.rand(())) * (hi - lo)

    def __call__(self, image: torch.Tensor, label: Label = None) -> tuple[torch.Tensor, Label]:
        g = self._uniform(1 / (1 + self.gamma), 1 + self.gamma)
        image = image.clamp(0, 1).pow(g)
        image = image * self._uniform(1 - self.brightness, 1 + self.brightness)
        mean = image.mean()
        image = (image - mean) * self._uniform(1 - self.contrast, 1 + self.contrast) + mean
        return image.clamp(0, 1), label


class Normalize:
    """``mode="imagenet"`` or ``"inception"``: (x - mean) / std with that pair (inception: 0.5, 0.5);
    ``mode="caffe"``: RGB->BGR, 0-255, minus DeepLab's BGR mean; ``"none"``: unchanged."""

    def __init__(self, mode: str = "imagenet") -> None:
        if mode not in NORMALIZATIONS:
            raise ValueError(f"normalisation must be one of {NORMALIZATIONS}, got {mode!r}")
        self.mode = mode

    def __call__(self, image: torch.Tensor, label: Label = None) -> tuple[torch.Tensor, Label]:
        return normalize(image, self.mode), label


def _affine(mode: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Normalisation ``mode`` as ``(a, b, flip)``: normalised = a * (RGB->BGR if flip)(x) + b per channel."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalisation must be one of {NORMALIZATIONS}, got {mode!r}")
    mean, std, flip = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD, False),
                       "inception": (INCEPTION_MEAN, INCEPTION_STD, False),
                       "caffe": (tuple(m / 255.0 for m in CAFFE_BGR_MEAN), (1 / 255.0,) * 3, True),
                       "none": ((0.0,) * 3, (1.0,) * 3, False)}[mode]
    shape = (3, 1, 1) if like.dim() == 3 else (1, 3, 1, 1)
    m, sd = (torch.tensor(v, device=like.device, dtype=torch.float64).view(shape) for v in (mean, std))
    return (1 / sd).to(like.dtype), (-m / sd).to(like.dtype), flip


def normalize(images: torch.Tensor, mode: str) -> torch.Tensor:
    """Normalise RGB images in [0, 1] (``3 x H x W`` or ``B x 3 x H x W``) as ``Normalize(mode)`` does."""
    a, b, flip = _affine(mode, images)
    return (images.flip(-3) if flip else images) * a + b


def denormalize(images: torch.Tensor, mode: str) -> torch.Tensor:
    """The inverse of :func:`normalize`: back to RGB in [0, 1]."""
    a, b, flip = _affine(mode, images)
    x = (images - b) / a
    return x.flip(-3) if flip else x


def transform_item(transform: Optional[Callable], image: torch.Tensor, label: Label) -> tuple[torch.Tensor, Label,
                                                                                               dict]:
    """Run a dataset's ``transform`` (any callable ``(image, label) -> (image, label)``); a :class:`Compose`
    also returns its extra images (see :meth:`Compose.apply`)."""
    if transform is None:
        return image, label, {}
    if isinstance(transform, Compose):
        return transform.apply(image, label)
    image, label = transform(image, label)
    return image, label, {}


def build_transforms(size: Optional[Sequence[int]] = None, crop: Optional[Sequence[int]] = None,
                     scale: Optional[Sequence[float]] = None, flip: bool = False, photometric: bool = False,
                     normalize: str = "imagenet", interpolation: str = "bilinear",
                     cat_max_ratio: Optional[float] = None) -> Compose:
    """Standard pipeline: resize -> (scale+crop, DAFormer's ``cat_max_ratio`` crop rule when set) -> flip ->
    photometric jitter -> normalise."""
    ts: list = []
    if size is not None:
        ts.append(Resize(size, interpolation))
    if crop is not None:
        ts.append(RandomScaleCrop(crop, scale or (1.0, 1.0), interpolation, cat_max_ratio))
    if flip:
        ts.append(RandomHorizontalFlip())
    if photometric:
        ts.append(PhotometricJitter())
    ts.append(Normalize(normalize))
    return Compose(ts)
