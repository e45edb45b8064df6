"""Transforms by value: the published normalisation constants, resizing (size order, bilinear without
antialias, bicubic antialiased only when shrinking and clipped to [0, 1], align_corners off), the error text,
and the teacher's unjittered image (same geometry, no jitter, normalised like the jittered one)."""

import pytest
import torch
import torch.nn.functional as F
from helpers import raises_exactly

from uda_perturb.data.transforms import Compose, Normalize, PhotometricJitter, Resize, normalize


def test_normalisation_constants_are_the_published_ones():
    x = torch.rand(3, 2, 2)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(normalize(x, "imagenet"), (x - mean) / std)
    torch.testing.assert_close(normalize(x, "inception"), (x - 0.5) / 0.5)
    bgr = torch.tensor([104.00698793, 116.66876762, 122.67891434]).view(3, 1, 1)
    torch.testing.assert_close(normalize(x, "caffe"), x.flip(0) * 255 - bgr)


def test_resize_keeps_height_and_width_apart_and_uses_the_plain_kernels():
    img = torch.rand(3, 6, 10)
    out, _ = Resize((4, 8))(img)
    assert out.shape == (3, 4, 8)
    torch.testing.assert_close(out, F.interpolate(img[None], size=(4, 8), mode="bilinear", align_corners=False)[0])


@pytest.mark.parametrize("size, shrink", [((4, 8), True), ((6, 8), True), ((4, 10), True), ((4, 14), True),
                                          ((12, 20), False), ((6, 14), False), ((9, 10), False)])
def test_bicubic_antialiases_only_when_shrinking_either_side_and_clips(size, shrink):
    # texture along both axes: resizing one side alone shows its kernel (antialiased bicubic uses PIL's a = -0.5,
    # the plain one a = -0.75, so even an enlarged side tells them apart)
    img = torch.rand(3, 6, 10, generator=torch.Generator().manual_seed(0))
    out, _ = Resize(size, mode="bicubic")(img)
    ref = F.interpolate(img[None], size=size, mode="bicubic", align_corners=False, antialias=shrink)[0].clamp(0, 1)
    other = F.interpolate(img[None], size=size, mode="bicubic", align_corners=False, antialias=not shrink)[0]
    assert not torch.allclose(ref, other.clamp(0, 1))  # the case can tell the two apart
    torch.testing.assert_close(out, ref)
    assert out.min() >= 0 and out.max() <= 1


def test_resize_error_text_in_full():
    with raises_exactly(ValueError, "interpolation must be one of ('bilinear', 'bicubic'), got 'nearest'"):
        Resize((4, 4), mode="nearest")


def test_the_unjittered_image_has_the_geometry_and_normalisation_but_not_the_jitter():
    img, label = torch.rand(3, 8, 12), torch.zeros(8, 12, dtype=torch.long)
    pipeline = Compose([Resize((4, 6)), PhotometricJitter(0.5, 0.4, 0.6), Normalize("imagenet")])
    torch.manual_seed(0)
    out, _, extras = pipeline.apply(img, label)
    clean = normalize(Resize((4, 6))(img)[0], "imagenet")
    torch.testing.assert_close(extras["image_unjittered"], clean)
    assert not torch.allclose(out, clean)
    assert Compose([Resize((4, 6))]).apply(img, label)[2] == {}
