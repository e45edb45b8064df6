"""One DACS step by value: the reference defaults literally, the pseudo-label weight at the threshold itself,
the state's source size, the multi-level (aux) mixed loss against a hand computation, channels-last inputs
giving the losses of contiguous ones, and the error texts in full."""
import inspect

import pytest
import torch
from helpers import raises_exactly

import uda_perturb as up
from uda_perturb.losses import pixel_weighted_ce
from uda_perturb.methods import build_method
from uda_perturb.methods.dacs import DACS, pseudo_labels


def test_reference_defaults_literally():
    params = {k: p.default for k, p in inspect.signature(DACS.__init__).parameters.items()
              if p.default is not inspect.Parameter.empty}
    assert params == {"addons": (), "seg_aux_weight": 0.1, "alpha": 0.99, "pseudo_threshold": 0.968,
                      "mix_weight": 1.0, "color_jitter_strength": 0.2, "color_jitter_probability": 0.2,
                      "blur": True, "mix_class_weights": False, "teacher_bn": "batch",
                      "teacher_jittered_input": False, "color_jitter_operator": "kornia",
                      "class_mix_classes": "batch", "psweight_ignore_top": 0, "psweight_ignore_bottom": 0,
                      "source_ce_mean": "valid"}


def test_a_pixel_exactly_at_the_threshold_counts_as_confident():
    logits = torch.zeros(1, 2, 1, 2)  # softmax [0.5, 0.5]: confidence exactly 0.5 at both pixels
    _, weight = pseudo_labels(logits, 0.5)
    assert torch.equal(weight, torch.ones(1, 1, 2))


def batches(seed=0, size=(2, 3, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    xs, xt = torch.randn(size, generator=g), torch.randn(size, generator=g)
    ys = torch.randint(0, 3, (size[0], *size[2:]), generator=g)
    return {"image": xs, "label": ys}, {"image": xt}


def dacs(multi_level=False):
    torch.manual_seed(0)
    seg = up.build_segmentor("conv1x1", backbone="lite", num_classes=3, multi_level=multi_level,
                             backbone_kwargs={"width": 8})
    return build_method("dacs", seg)


def test_the_mixed_aux_loss_is_its_weighted_ce_on_the_aux_head():
    method = dacs(multi_level=True)
    source, target = batches()
    state = method.forward_domains(source, target)
    assert state.source_size == (16, 16)
    losses = method.generator_losses(state)
    expected = 1.0 * 0.1 * pixel_weighted_ce(state.mixed.aux_logits, state.mixed_labels, state.mixed_weights)
    torch.testing.assert_close(losses["mix_aux"], expected)
    assert set(losses) == {"seg", "seg_aux", "mix", "mix_aux"}


def test_channels_last_inputs_give_the_losses_of_contiguous_ones():
    source, target = batches()
    contiguous, channels_last = dacs(), dacs()  # the same initial weights
    torch.manual_seed(1)  # the same masks and augmentation draws
    plain = contiguous.generator_losses(contiguous.forward_domains(source, target))
    cl = {"image": source["image"].contiguous(memory_format=torch.channels_last), "label": source["label"]}
    torch.manual_seed(1)
    state = channels_last.forward_domains(cl, {"image": target["image"].contiguous(memory_format=torch.channels_last)})
    for k, v in channels_last.generator_losses(state).items():
        torch.testing.assert_close(v, plain[k], rtol=1e-4, atol=1e-5)


def test_error_texts_in_full():
    method = dacs()
    source, target = batches()
    with pytest.raises(ValueError, match=r"^dacs needs target batches$"):
        method.forward_domains(source, None)
    _, small = batches(size=(2, 3, 8, 8))
    text = ("dacs mixes source and target images of one size: got (2, 3, 16, 16) and (2, 3, 8, 8); give both "
            "domains the same transforms.size")
    with raises_exactly(ValueError, text):
        method.forward_domains(source, small)


def test_teacher_errors_in_full_and_the_teacher_never_reports_training():
    from uda_perturb.methods.mean_teacher import MeanTeacher

    student = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Dropout(0.5))
    with pytest.raises(ValueError, match=r"^EMA alpha must be in \[0, 1\), got 1\.0$"):
        MeanTeacher(student, 1.0)
    with pytest.raises(ValueError, match=r"^teacher BatchNorm mode must be one of \('batch', 'stored'\), got 'x'$"):
        MeanTeacher(student, bn="x")
    teacher = MeanTeacher(student).train()
    assert not teacher.training and teacher.model.training and not teacher.model[1].training


def test_strong_jitter_clips_the_hue_shift_to_its_valid_range():
    from uda_perturb.data.transforms import normalize
    from uda_perturb.mixing import strong_augment

    torch.manual_seed(0)
    x = normalize(torch.rand(8, 3, 6, 6), "imagenet")
    out = strong_augment(x, "imagenet", jitter_strength=1.0, jitter_probability=0.0, blur=False)  # hue +-0.5
    assert out.shape == x.shape and not torch.equal(out, x)
