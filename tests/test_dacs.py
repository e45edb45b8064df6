"""DACS: ClassMix masks and mixing, the pseudo-label weight, the EMA teacher, rare-class sampling, resume.

Reproduced from DACS's / DAFormer's reference code (mmseg/models/uda/dacs.py, utils/dacs_transforms.py,
datasets/uda_dataset.py): ceil(n/2) of an image's n classes are pasted; the pseudo-label weight is the share
of teacher pixels with confidence >= 0.968; the EMA factor is min(1 - 1/(t + 1), 0.99); rare-class sampling
draws class c with softmax((1 - f_c) / 0.01); the blur kernel is about 10 % of the side, odd.
"""
import math

import numpy as np
import pytest
import torch
from helpers import assert_resume_is_bit_exact, tiny_config

from uda_perturb.data.rare_class_sampling import RareClassSampler, class_probabilities
from uda_perturb.data.transforms import NORMALIZATIONS, denormalize, normalize
from uda_perturb.engine import Trainer
from uda_perturb.losses import pixel_weighted_ce
from uda_perturb.methods.dacs import pseudo_labels
from uda_perturb.methods.mean_teacher import MeanTeacher
from uda_perturb.mixing import blur_kernel_size, class_mix, class_mix_mask, class_mix_masks, strong_augment


@pytest.mark.parametrize("present,chosen", [([0], 1), ([0, 3], 2), ([0, 1, 2], 2), ([0, 1, 2, 5], 3)])
def test_class_mix_mask_pastes_half_the_values_whole_the_ignore_label_counting_as_one(present, chosen):
    """As both references: ``torch.unique`` of the label, 255 included, ceil(n / 2) of the n values."""
    label = torch.tensor(present * 6 + [255] * 4)[torch.randperm(len(present) * 6 + 4)].view(2, -1)
    seen_ignore = False
    for seed in range(12):
        mask = class_mix_mask(label, generator=torch.Generator().manual_seed(seed))
        in_mask = set(label[mask.bool()].tolist())
        assert len(in_mask) == chosen
        seen_ignore |= 255 in in_mask
        for c in present + [255]:  # every value is pasted whole or not at all
            assert mask[label == c].min() == mask[label == c].max()
    assert seen_ignore  # the ignore label is pasted too, sometimes
    no_ignore = class_mix_mask(label, ignore_index=255)
    assert 255 not in set(label[no_ignore.bool()].tolist())


def test_class_mix_draws_from_the_batch_classes_by_default_and_from_each_image_as_an_option():
    """DAFormer: each image pastes ceil(n / 2) of the n values of the whole batch (so an image may paste a class
    it does not hold); DACS: of its own values."""
    labels = torch.stack([torch.tensor([[0, 0], [1, 1]]), torch.tensor([[2, 2], [3, 3]])])
    for seed in range(20):
        torch.manual_seed(seed)
        masks = class_mix_masks(labels)
        torch.manual_seed(seed)
        pools = [torch.unique(labels)] * 2
        chosen = [p[torch.randperm(4)[:2]] for p in pools]
        for m, y, c in zip(masks, labels, chosen):
            assert torch.equal(m, torch.isin(y, c).float())
        torch.manual_seed(seed)
        own = class_mix_masks(labels, "image")
        for m in own:
            assert float(m.mean()) == 0.5  # one of its own two classes: half the image
    with pytest.raises(ValueError, match="class mix classes must be one of"):
        class_mix_masks(labels, "pixel")


def test_class_mix_images_labels_and_weights_are_exact():
    xs, xt = torch.full((1, 3, 2, 2), 2.0), torch.full((1, 3, 2, 2), -3.0)  # not 1/-1: x * m == m / x there
    ys = torch.tensor([[[0, 1], [2, 255]]])
    pseudo = torch.tensor([[[4, 4], [4, 4]]])
    w = torch.full((1, 2, 2), 0.3)
    mask = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    images, labels, weights = class_mix(xs, ys, xt, pseudo, w, mask)
    assert torch.equal(images[0, 0], torch.tensor([[2.0, -3.0], [2.0, -3.0]]))
    assert torch.equal(labels, torch.tensor([[[0, 4], [2, 4]]]))
    assert torch.equal(weights, torch.tensor([[[1.0, 0.3], [1.0, 0.3]]]))


def test_pseudo_label_weight_is_share_of_confident_teacher_pixels():
    # 4 pixels, confidences 0.99, 0.97, 0.9, 0.5 -> 2 of 4 reach 0.968
    conf = torch.tensor([0.99, 0.97, 0.9, 0.5])
    logits = torch.stack([torch.log(conf), torch.log(1 - conf)], dim=0).view(1, 2, 2, 2)
    labels, weight = pseudo_labels(logits, 0.968)
    assert torch.equal(labels, torch.zeros(1, 2, 2, dtype=torch.long))
    torch.testing.assert_close(weight, torch.full((1, 2, 2), 0.5))


def test_pseudo_label_weight_ignores_the_top_and_bottom_rows_when_asked():
    logits = torch.zeros(2, 3, 6, 4)
    logits[:, 0] = 10.0  # every pixel confident
    _, weight = pseudo_labels(logits, 0.968, ignore_top=1, ignore_bottom=2)
    expected = torch.ones(2, 6, 4)
    expected[:, :1] = 0
    expected[:, -2:] = 0
    assert torch.equal(weight, expected)
    assert torch.equal(pseudo_labels(logits, 0.968)[1], torch.ones(2, 6, 4))


def test_pixel_weighted_ce_is_the_mean_over_all_pixels():
    logits = torch.randn(1, 3, 2, 2)
    labels = torch.tensor([[[0, 1], [2, 255]]])
    w = torch.tensor([[[1.0, 0.5], [0.25, 1.0]]])
    logp = logits.log_softmax(1)[0]
    expected = -(1.0 * logp[0, 0, 0] + 0.5 * logp[1, 0, 1] + 0.25 * logp[2, 1, 0]) / 4
    torch.testing.assert_close(pixel_weighted_ce(logits, labels, w), expected)


def test_ema_teacher_formula_and_no_gradients():
    student = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2))
    teacher = MeanTeacher(student, alpha=0.99)
    t0 = teacher.model[0].weight.clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
    teacher.update(student, step=1)  # a = min(1 - 1/2, 0.99) = 0.5
    torch.testing.assert_close(teacher.model[0].weight, 0.5 * t0 + 0.5 * student[0].weight)
    assert teacher.momentum(1) == 0.5 and teacher.momentum(50) == pytest.approx(1 - 1 / 51)
    assert teacher.momentum(1000) == 0.99
    assert not any(p.requires_grad for p in teacher.parameters())


def test_rare_class_probabilities_from_known_frequencies():
    classes, p = class_probabilities([900, 0, 90, 10], temperature=0.01)
    assert classes.tolist() == [0, 2, 3]
    z = [(1 - f) / 0.01 for f in (0.9, 0.09, 0.01)]
    expected = [math.exp(v - max(z)) / sum(math.exp(u - max(z)) for u in z) for v in z]
    np.testing.assert_allclose(p, expected, rtol=1e-12)


def test_rare_class_sampler_frequencies_eligibility_and_resumability():
    counts = np.array([[5000, 0, 10], [4000, 4000, 0], [100, 0, 3500], [6000, 0, 2999]])
    sampler = RareClassSampler(counts, seed=3, temperature=0.5, min_pixels=3000)
    draws = [d for d, _ in zip(iter(sampler), range(4000))]
    _, p = class_probabilities(counts.sum(0), 0.5)
    freq = np.bincount([c for _, _, c in draws], minlength=3) / len(draws)
    np.testing.assert_allclose(freq, p, atol=0.03)
    for index, _, c in draws:  # an image is drawn for a class only when it holds more than min_pixels of it
        assert counts[index, c] > 3000
    resumed = [d for d, _ in zip(iter(RareClassSampler(counts, seed=3, start=100, temperature=0.5)), range(5))]
    assert resumed == draws[100:105]


def test_normalise_round_trip_and_strong_augment_keeps_shape():
    x = torch.rand(2, 3, 8, 10)
    for mode in NORMALIZATIONS:
        torch.testing.assert_close(denormalize(normalize(x, mode), mode), x, atol=1e-5, rtol=0)
    y = strong_augment(normalize(x, "imagenet"), "imagenet", jitter_probability=0.0)
    assert y.shape == x.shape and not torch.equal(y, normalize(x, "imagenet"))
    assert blur_kernel_size(180) == 17 and blur_kernel_size(240) == 23 and blur_kernel_size(512) == 51
    assert blur_kernel_size(170) == 17 and blur_kernel_size(90) == 9  # ceil(10 %) odd: kept as it is


def test_dacs_trains_teacher_follows_and_resume_is_bit_exact(tmp_path):
    full, _ = assert_resume_is_bit_exact(tmp_path, "dacs", ["train.iters=4", "method.addons=[perturbation]"])
    init = Trainer(tiny_config("dacs"), tmp_path / "init", progress=False).method.teacher.model.head.conv.weight
    assert not torch.equal(full.method.teacher.model.head.conv.weight, init)
    log = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert '"g/mix"' in log and '"g/def_mixed"' in log and '"g/def_source"' in log
    assert any(k.startswith("teacher.") for k in full.method.state_dict())


def test_dacs_refuses_mismatched_domain_sizes(tmp_path):
    cfg = tiny_config("dacs", "train.iters=1", "data.target.options={domain: target, size: [32, 40], length: 4}")
    with pytest.raises(ValueError, match="same transforms.size"):
        Trainer(cfg, tmp_path / "r", progress=False).fit()


def test_strong_augment_defaults_blur_rate_clamping_and_identity():
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(strong_augment).parameters.items()
                if v.default is not inspect.Parameter.empty}
    assert defaults == {"jitter_strength": 0.2, "jitter_probability": 0.2, "blur": True,
                        "jitter_operator": "kornia"}  # DAFormer's
    flat = torch.full((1, 3, 24, 24), 0.3)
    x = normalize(flat, "imagenet")
    blurred = 0
    for seed in range(40):
        torch.manual_seed(seed)
        torch.testing.assert_close(strong_augment(x, "imagenet", jitter_probability=1.0, blur=False), x)
        torch.manual_seed(seed)
        y = strong_augment(x, "imagenet", jitter_probability=1.0)  # blur only: a flat image stays flat
        torch.testing.assert_close(denormalize(y, "imagenet"), flat, atol=1e-5, rtol=0)
        bright = normalize(torch.full((1, 3, 24, 24), 1.5), "imagenet")  # out of range: clamped to 1 first
        torch.manual_seed(seed)
        z = strong_augment(bright, "imagenet", jitter_probability=1.0)
        if not torch.equal(z, bright):
            blurred += 1
            torch.testing.assert_close(denormalize(z, "imagenet"), torch.ones(1, 3, 24, 24), atol=1e-5, rtol=0)
    assert 10 <= blurred <= 30  # blur is drawn with probability 0.5


@pytest.mark.parametrize("operator", ["kornia", "torchvision"])
def test_strong_augment_draws_dacs_factors_per_image_and_blurs_each_axis_with_its_own_kernel(operator):
    import torchvision.transforms.functional as TF

    from uda_perturb.color_jitter import kornia_jitter

    x = normalize(torch.rand(2, 3, 30, 50), "imagenet")  # not square: kernel sizes differ per axis
    for seed in range(6):
        torch.manual_seed(seed)
        got = strong_augment(x, "imagenet", 0.2, 0.2, blur=True, jitter_operator=operator)
        torch.manual_seed(seed)  # replay DACS/DAFormer's definitions draw by draw
        jitter, blur = float(torch.rand(())) > 0.2, float(torch.rand(())) > 0.5
        out = []
        for img in denormalize(x, "imagenet").clamp(0, 1):
            if jitter and operator == "kornia":  # b, c, s uniform in [1 - s, 1 + s], hue in [-s, s], an order
                b, c, sat = (0.8 + 0.4 * float(torch.rand(())) for _ in range(3))
                img = kornia_jitter(img, (b, c, sat, -0.2 + 0.4 * float(torch.rand(()))), torch.randperm(4).tolist())
            elif jitter:
                img = TF.adjust_brightness(img, 0.8 + 0.4 * float(torch.rand(())))
                img = TF.adjust_contrast(img, 0.8 + 0.4 * float(torch.rand(())))
                img = TF.adjust_saturation(img, 0.8 + 0.4 * float(torch.rand(())))
                img = TF.adjust_hue(img, -0.2 + 0.4 * float(torch.rand(())))
            if blur:  # sigma uniform in [0.15, 1.15]; kernel ~10 % of each side, odd: 5 across, 3 down
                sigma = 0.15 + float(torch.rand(()))
                img = TF.gaussian_blur(img, kernel_size=[5, 3], sigma=[sigma, sigma])
            out.append(img)
        expected = normalize(torch.stack(out), "imagenet") if (jitter or blur) else x
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
