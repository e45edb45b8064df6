"""The MIC add-on's settings and edges by value: it needs target batches, the mask ratio and block size bounds
and their error texts, its refusal of teacher-less methods and of states without pseudo-labels, the aux
loss of a multi-level network, and channels-last teacher images giving the losses of contiguous ones."""

import pytest
import torch
from helpers import raises_exactly

import uda_perturb as up
from uda_perturb.errors import ConfigError
from uda_perturb.losses import pixel_weighted_ce
from uda_perturb.methods import build_method
from uda_perturb.methods.base import StepState
from uda_perturb.methods.mic import MaskedImageConsistency


def test_bounds_and_their_texts():
    assert MaskedImageConsistency.needs_target is True
    MaskedImageConsistency(mask_ratio=0.0)
    MaskedImageConsistency(block_size=1)
    for ratio in (1.0, 1.5, -0.1):
        with raises_exactly(ValueError, f"mic mask_ratio must be in [0, 1), got {ratio}"):
            MaskedImageConsistency(mask_ratio=ratio)
    with raises_exactly(ValueError, "mic block_size must be positive, got 0"):
        MaskedImageConsistency(block_size=0)


def dacs_with_mic(multi_level=False):
    torch.manual_seed(0)
    seg = up.build_segmentor("conv1x1", backbone="lite", num_classes=3, multi_level=multi_level,
                             backbone_kwargs={"width": 8})
    return build_method("dacs", seg, ["mic"])


def state_of(method, image):
    state = StepState(method.segmentor.forward_all(image), torch.zeros(2, 16, 16, dtype=torch.long), (16, 16))
    g = torch.Generator().manual_seed(3)
    state.teacher_image = image
    state.pseudo_labels = torch.randint(0, 3, (2, 16, 16), generator=g)
    state.pseudo_weights = torch.full((2, 16, 16), 0.4)
    return state


def test_refusals_in_full():
    seg = up.build_segmentor("conv1x1", backbone="lite", num_classes=3, backbone_kwargs={"width": 8})
    with pytest.raises(ConfigError, match=r"^the mic add-on needs a method with an EMA teacher and pseudo-labels "
                                          r"\(dacs\), not SourceOnly$"):
        build_method("source_only", seg, ["mic"])
    method = dacs_with_mic()
    state = state_of(method, torch.randn(2, 3, 16, 16))
    state.pseudo_labels = None  # the weights are there, the labels are not
    with pytest.raises(ValueError, match=r"^the mic add-on needs the host method's pseudo-labels \(a method with an "
                                         r"EMA teacher\)$"):
        method.addons[0](method, state)


def test_the_aux_head_gets_its_weighted_share():
    method = dacs_with_mic(multi_level=True)
    image = torch.randn(2, 3, 16, 16)
    state = state_of(method, image)
    torch.manual_seed(5)
    losses, stats = method.addons[0](method, state)
    torch.manual_seed(5)  # replay the augmentation and mask draws
    out = method.segmentor.forward_all(method.addons[0].masked_image(image, method.input_normalization))
    torch.testing.assert_close(losses["mic_aux"], 1.0 * 0.1 * pixel_weighted_ce(out.aux_logits, state.pseudo_labels,
                                                                                state.pseudo_weights))
    assert stats == {"mic_pseudo_weight": pytest.approx(0.4)}


def test_channels_last_teacher_images_give_the_losses_of_contiguous_ones():
    method = dacs_with_mic()
    image = torch.randn(2, 3, 16, 16)
    torch.manual_seed(5)
    plain, _ = method.addons[0](method, state_of(method, image))
    torch.manual_seed(5)
    cl, _ = method.addons[0](method, state_of(method, image.contiguous(memory_format=torch.channels_last)))
    torch.testing.assert_close(cl["mic"], plain["mic"], rtol=1e-4, atol=1e-5)
