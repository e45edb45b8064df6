"""The references' colour jitter (kornia 0.5.8's ColorJitter as DACS and DAFormer call it) against formulas
written here: additive brightness, contrast without the mean, saturation and hue in HSV, a random order, and
the clips; the earlier torchvision operator stays reachable and unchanged."""
import colorsys
import math

import pytest
import torch
import torchvision.transforms.functional as TF

from uda_perturb.color_jitter import color_jitter, hsv_to_rgb, kornia_jitter, rgb_to_hsv
from uda_perturb.mixing import strong_augment


def image(seed=0, h=4, w=5):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def per_pixel(fn, img):
    """Apply ``fn(r, g, b) -> (r, g, b)`` to every pixel (the formulas of Python's colorsys)."""
    out = torch.empty_like(img)
    for i in range(img.shape[1]):
        for j in range(img.shape[2]):
            out[:, i, j] = torch.tensor(fn(*img[:, i, j].tolist()))
    return out


def saturate(f):
    def fn(r, g, b):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb(h, min(max(s * f, 0.0), 1.0), v)
    return fn


def shift_hue(f):
    def fn(r, g, b):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb((h + f) % 1.0, s, v)
    return fn


def test_hsv_round_trip_and_agreement_with_colorsys():
    x = image(1)
    hsv = rgb_to_hsv(x)
    ref = per_pixel(lambda r, g, b: colorsys.rgb_to_hsv(r, g, b), x)
    torch.testing.assert_close(hsv[0] / (2 * math.pi), ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(hsv[1:], ref[1:], atol=2e-5, rtol=1e-4)  # kornia's eps = 1e-6 in s
    torch.testing.assert_close(hsv_to_rgb(hsv), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k,factors,formula", [
    (0, (1.3, 1, 1, 0), lambda x: (x + 0.3).clamp(0, 1)),          # brightness adds b - 1, clipped above
    (0, (0.6, 1, 1, 0), lambda x: (x - 0.4).clamp(0, 1)),          # ... and below
    (1, (1, 1.7, 1, 0), lambda x: (x * 1.7).clamp(0, 1)),          # contrast multiplies, no mean, clipped
    (2, (1, 1, 1.6, 0), lambda x: per_pixel(saturate(1.6), x)),    # saturation in HSV, s clipped to 1
    (3, (1, 1, 1, 0.2), lambda x: per_pixel(shift_hue(0.2), x)),  # hue turns by 0.2 of the circle
    (3, (1, 1, 1, -0.3), lambda x: per_pixel(shift_hue(-0.3), x)),
])
def test_each_adjustment_is_the_reference_formula(k, factors, formula):
    x = image(2)
    torch.testing.assert_close(kornia_jitter(x, factors, [k]), formula(x), atol=2e-5, rtol=1e-4)


def test_the_order_is_the_drawn_one():
    x = image(3)
    b, c = 1.25, 0.7
    add_then_mul = ((x + 0.25).clamp(0, 1) * 0.7).clamp(0, 1)
    mul_then_add = ((x * 0.7).clamp(0, 1) + 0.25).clamp(0, 1)
    assert not torch.allclose(add_then_mul, mul_then_add)
    torch.testing.assert_close(kornia_jitter(x, (b, c, 1, 0), [0, 1, 2, 3]), add_then_mul, atol=1e-5, rtol=0)
    torch.testing.assert_close(kornia_jitter(x, (b, c, 1, 0), [1, 3, 0, 2]), mul_then_add, atol=1e-5, rtol=0)


def test_draws_are_uniform_in_the_strength_and_the_order_is_a_random_permutation():
    s = 0.3
    x = image(4)
    torch.manual_seed(7)
    got = color_jitter(x, s)
    torch.manual_seed(7)
    b, c, sat = (1 - s + float(torch.rand(())) * 2 * s for _ in range(3))
    h = (2 * float(torch.rand(())) - 1) * s
    order = torch.randperm(4).tolist()
    torch.testing.assert_close(got, kornia_jitter(x, (b, c, sat, h), order))
    orders = set()
    for seed in range(40):
        torch.manual_seed(seed)
        [torch.rand(()) for _ in range(4)]
        orders.add(tuple(torch.randperm(4).tolist()))
    assert len(orders) > 10  # the order changes from call to call


def test_the_torchvision_operator_is_the_earlier_one():
    x = image(5)
    torch.manual_seed(3)
    got = color_jitter(x, 0.2, "torchvision")
    torch.manual_seed(3)
    d = [(2 * float(torch.rand(())) - 1) * 0.2 for _ in range(4)]
    ref = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, 1 + d[0]), 1 + d[1]),
                                             1 + d[2]), d[3])
    torch.testing.assert_close(got, ref)
    with pytest.raises(ValueError, match="colour jitter operator must be one of"):
        color_jitter(x, 0.2, "pil")


def test_the_reference_operator_moves_pixels_more_than_the_earlier_one():
    """The finding that started this: kornia's additive brightness and mean-free contrast change a dark image
    2-3x more than torchvision's multiplicative ones at the same strength."""
    x = image(6, 32, 32) * 0.3  # a dusk-like image
    changes = {}
    for op in ("kornia", "torchvision"):
        torch.manual_seed(0)
        changes[op] = sum(float((color_jitter(x, 0.2, op) - x).abs().mean()) for _ in range(50))
    assert changes["kornia"] > 1.5 * changes["torchvision"]


def test_strong_augment_uses_the_reference_operator_by_default():
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(11)
    default = strong_augment(x, "imagenet", 0.2, 0.0, blur=False)
    torch.manual_seed(11)
    kornia = strong_augment(x, "imagenet", 0.2, 0.0, blur=False, jitter_operator="kornia")
    torch.manual_seed(11)
    tv = strong_augment(x, "imagenet", 0.2, 0.0, blur=False, jitter_operator="torchvision")
    assert torch.equal(default, kornia) and not torch.allclose(default, tv)
