"""The random transforms by value, with their random draws fixed: photometric jitter against its formula, the
scale-and-crop's scale, padding and crop offsets, the flip's threshold; and the defaults, error texts and
pipeline assembly a config relies on."""

import pytest
import torch
import torch.nn.functional as F
from helpers import raises_exactly

from uda_perturb.data.label_maps import IGNORE
from uda_perturb.data.transforms import (
    Normalize,
    PhotometricJitter,
    RandomHorizontalFlip,
    RandomScaleCrop,
    build_transforms,
    normalize,
    transform_item,
)


class Draws:
    """Stands in for ``torch.rand(())`` (the given values in turn) and ``torch.randint(0, high, ())`` (records
    ``high``, returns ``offset(high)``)."""

    def __init__(self, monkeypatch, rand=(), offset=lambda high: 0):
        self.rand, self.highs, self.offset = list(rand), [], offset
        monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(self.rand.pop(0)))
        monkeypatch.setattr(torch, "randint", self._randint)

    def _randint(self, low, high, size):
        assert low == 0 and size == ()
        self.highs.append(high)
        return torch.tensor(self.offset(high))


def _jitter_by_hand(x, u_gamma, u_bright, u_contrast):
    g = 1 / 1.6 + u_gamma * (1.6 - 1 / 1.6)
    y = x.clamp(0, 1) ** g * (0.5 + u_bright * 1.0)
    m = y.mean()
    return (y - m) * (0.6 + u_contrast * 0.8) + m


@pytest.mark.parametrize("draws", [(0.25, 0.9, 0.1), (0.25, 0.1, 0.1), (0.8, 0.3, 0.95)])
def test_photometric_jitter_is_gamma_then_brightness_then_contrast_about_the_mean(monkeypatch, draws):
    x = torch.tensor([-0.1, 0.0, 0.2, 0.45, 0.7, 0.9, 1.0, 1.3]).repeat(3, 1).view(3, 2, 4)
    x[1] *= 0.8  # channels differ: the mean is over the whole image
    label = torch.zeros(2, 4, dtype=torch.long)
    Draws(monkeypatch, draws)
    out, lab = PhotometricJitter()(x, label)
    before_clip = _jitter_by_hand(x, *draws)
    torch.testing.assert_close(out, before_clip.clamp(0, 1))
    assert lab is label


def test_the_jitter_cases_reach_both_clips():
    """The cases above would not see a clip dropped: some output is clipped at 1, and the input's 1.3 (clipped
    to 1 before the gamma) lands below 1 in another."""
    x = torch.tensor([-0.1, 0.0, 0.2, 0.45, 0.7, 0.9, 1.0, 1.3]).repeat(3, 1).view(3, 2, 4)
    assert (_jitter_by_hand(x, 0.25, 0.9, 0.1) > 1).any()
    assert _jitter_by_hand(x, 0.25, 0.1, 0.1)[0, 1, 3] < 1


def test_defaults_are_the_documented_ones():
    jitter = PhotometricJitter()
    assert (jitter.brightness, jitter.contrast, jitter.gamma) == (0.5, 0.4, 0.6)
    crop = RandomScaleCrop((2, 3))
    assert crop.crop == (2, 3) and crop.scale == (0.75, 1.25) and crop.interpolation == "bilinear"
    assert RandomScaleCrop((2, 3), (0.5, 2.0)).scale == (0.5, 2.0)
    assert RandomHorizontalFlip().p == 0.5
    assert Normalize().mode == "imagenet"


def _image_and_label(h=4, w=8):
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
    return image, torch.arange(h * w).view(h, w) % 7


def _resized(image, label, size):
    img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    lab = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return img, lab


def test_scale_crop_draws_the_scale_in_its_range_and_pads_both_sides_with_ignore_labels(monkeypatch):
    image, label = _image_and_label()
    draws = Draws(monkeypatch, [0.5])
    img, lab = RandomScaleCrop((5, 7), (0.5, 1.0))(image, label)  # s = 0.5 + 0.5 * 0.5 = 0.75: 4 x 8 -> 3 x 6
    small_img, small_lab = _resized(image, label, (3, 6))
    torch.testing.assert_close(img, F.pad(small_img, (0, 1, 0, 2)))
    assert torch.equal(lab, F.pad(small_lab, (0, 1, 0, 2), value=IGNORE))
    assert draws.highs == [1, 1]  # the padded image is the crop: one offset each way


def test_scale_crop_pads_one_side_only_when_only_that_side_is_short(monkeypatch):
    image, label = _image_and_label()
    draws = Draws(monkeypatch, [0.0])
    img, lab = RandomScaleCrop((2, 6), (0.5, 0.5))(image, label)  # 4 x 8 -> 2 x 4, padded in width only
    small_img, small_lab = _resized(image, label, (2, 4))
    torch.testing.assert_close(img, F.pad(small_img, (0, 2)))
    assert torch.equal(lab, F.pad(small_lab, (0, 2), value=IGNORE))
    assert draws.highs == [1, 1]


def test_scale_crop_never_resizes_below_one_pixel(monkeypatch):
    image, label = _image_and_label(2, 2)
    Draws(monkeypatch, [0.0])
    img, lab = RandomScaleCrop((2, 2), (0.25, 0.25))(image, label)  # round(0.5) = 0 -> 1 x 1, then padded
    small_img, small_lab = _resized(image, label, (1, 1))
    torch.testing.assert_close(img, F.pad(small_img, (0, 1, 0, 1)))
    assert torch.equal(lab, F.pad(small_lab, (0, 1, 0, 1), value=IGNORE))


def test_scale_crop_offsets_range_over_every_position_and_cut_image_and_label_alike(monkeypatch):
    image, label = _image_and_label()
    draws = Draws(monkeypatch, [0.3], offset=lambda high: high - 1)  # the last position each way
    img, lab = RandomScaleCrop((2, 3), (1.0, 1.0))(image, label)
    assert draws.highs == [3, 6]  # 4 - 2 + 1 rows, 8 - 3 + 1 columns
    torch.testing.assert_close(img, image[:, 2:4, 5:8])
    assert torch.equal(lab, label[2:4, 5:8])


def test_scale_crop_error_text_names_the_interpolations():
    with raises_exactly(ValueError, "interpolation must be one of ('bilinear', 'bicubic'), got 'nearest'"):
        RandomScaleCrop((2, 2), (1.0, 1.0), "nearest")(*_image_and_label())


def test_flip_happens_strictly_below_its_probability(monkeypatch):
    image, label = _image_and_label()
    Draws(monkeypatch, [0.5, 0.4999])
    img, lab = RandomHorizontalFlip(0.5)(image, label)
    assert torch.equal(img, image) and torch.equal(lab, label)
    img, lab = RandomHorizontalFlip(0.5)(image, label)
    assert torch.equal(img, image.flip(-1)) and torch.equal(lab, label.flip(-1))


def test_normalisation_none_changes_nothing_and_errors_name_the_modes():
    image, _ = _image_and_label()
    assert torch.equal(normalize(image, "none"), image)  # no channel flip either
    text = "normalisation must be one of ('imagenet', 'inception', 'caffe', 'none'), got 'bgr'"
    with raises_exactly(ValueError, text):
        Normalize("bgr")
    with raises_exactly(ValueError, text):
        normalize(image, "bgr")


def test_a_plain_callable_transform_runs_without_extras():
    image, label = _image_and_label()
    out, lab, extras = transform_item(lambda img, lab: (img * 2, lab + 1), image, label)
    torch.testing.assert_close(out, image * 2)
    assert torch.equal(lab, label + 1) and extras == {}
    assert transform_item(None, image, label) == (image, label, {})


def test_build_transforms_flips_only_when_asked_and_crops_at_scale_one_by_default():
    assert [type(t).__name__ for t in build_transforms().transforms] == ["Normalize"]
    crop = build_transforms(crop=(2, 3)).transforms[0]
    assert isinstance(crop, RandomScaleCrop) and crop.scale == (1.0, 1.0)
    assert [type(t).__name__ for t in build_transforms(size=(4, 4), crop=(2, 2), scale=(0.5, 1.5), flip=True,
                                                       photometric=True, normalize="none").transforms] == [
        "Resize", "RandomScaleCrop", "RandomHorizontalFlip", "PhotometricJitter", "Normalize"]
