"""The method template's rules at the step a user runs: the supervised CE class-weighted (and the aux head's at its
weight), the losses summed in full, the discriminators' reference defaults and input channels, the aux
discriminator's weight when one is given, which methods ask for target batches, and the step's flat log."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import uda_perturb as up
from uda_perturb.methods import build_method
from uda_perturb.methods.base import UDAMethod, sum_losses

K = 4


def step_batches(size=32):
    g = torch.Generator().manual_seed(2)
    source = {"image": torch.randn(2, 3, size, size, generator=g), "label": torch.randint(0, K, (2, size, size),
                                                                                         generator=g)}
    return source, {"image": torch.randn(2, 3, size, size, generator=g)}


def segmentor(multi_level=False):
    torch.manual_seed(0)
    return up.build_segmentor("aspp_v2", backbone="lite", num_classes=K, multi_level=multi_level,
                              backbone_kwargs={"width": 8}, head_kwargs={"dilations": (1, 2), "branches": 2})


def test_the_supervised_ce_is_class_weighted_at_the_step_and_the_aux_head_counts_at_its_weight():
    method = build_method("source_only", segmentor(multi_level=True), [], {"seg_aux_weight": 0.3})
    w = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    method.set_class_weights(w)
    assert method.class_weights.dtype == torch.float32 and "class_weights" not in method.state_dict()
    source, target = step_batches()
    state = method.forward_domains(source, target)
    losses = method.generator_losses(state)
    up_main = F.interpolate(state.source.logits, (32, 32), mode="bilinear", align_corners=True)
    up_aux = F.interpolate(state.source.aux_logits, (32, 32), mode="bilinear", align_corners=True)
    torch.testing.assert_close(losses["seg"], F.cross_entropy(up_main, source["label"], weight=w.float()))
    torch.testing.assert_close(losses["seg_aux"], 0.3 * F.cross_entropy(up_aux, source["label"], weight=w.float()))
    with pytest.raises(ValueError, match=r"^class weights must be a vector of 4, got \(2, 2\)$"):
        method.set_class_weights(torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"^class weights must be a vector of 4, got \(3,\)$"):
        method.set_class_weights(torch.ones(3))


def test_the_step_sums_every_loss_term_and_logs_them_flat():
    a, b, c = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)
    assert float(sum_losses({"x": a, "y": b, "z": c})) == 7.0
    method = build_method("adaptsegnet", segmentor(), [], {"ndf": 4})
    method.input_normalization = "imagenet"
    result = method.training_step(*step_batches())
    flat = result.flat()
    assert set(flat) == {"g/seg", "g/adv_main", "d/d_main"}
    assert result.total == pytest.approx(flat["g/seg"] + flat["g/adv_main"])


def test_discriminators_follow_the_references_and_their_input_space():
    params = inspect.signature(UDAMethod.add_discriminators).parameters
    assert {k: p.default for k, p in params.items() if k != "self"} == {
        "name": "fc", "weights": (0.001, 0.0002), "ndf": 64, "space": None}  # AdaptSegNet's lambda_adv and ndf
    assert inspect.signature(UDAMethod.__init__).parameters["seg_aux_weight"].default == 0.1
    seg = segmentor(multi_level=True)
    method = build_method("adaptsegnet", seg, [], {"adv_weights": [0.005]})
    assert method.adv_weights == {"main": 0.005, "aux": pytest.approx(0.001)}  # one weight given: aux a fifth
    two = build_method("adaptsegnet", segmentor(multi_level=True), [], {"adv_weights": [0.005, 0.0003]})
    assert two.adv_weights == {"main": 0.005, "aux": 0.0003}
    first = next(m for m in method.discriminators["main"].modules() if isinstance(m, torch.nn.Conv2d))
    assert (first.in_channels, first.out_channels) == (K, 64)  # softmax space: one channel per class
    method.add_discriminators(space="features", ndf=4)
    convs = [m for m in method.discriminators["main"].modules() if isinstance(m, torch.nn.Conv2d)]
    aux_convs = [m for m in method.discriminators["aux"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].in_channels == seg.backbone.out_channels and aux_convs[0].in_channels == seg.backbone.aux_channels
    assert convs[0].out_channels == 4


def test_only_methods_or_add_ons_that_use_target_batches_ask_for_them():
    assert not build_method("source_only", segmentor(), [], {}).wants_target_batches
    assert build_method("source_only", segmentor(), ["perturbation"], {}).wants_target_batches
    assert not build_method("source_only", segmentor(), [{"name": "perturbation", "lambda_target": 0.0}],
                            {}).wants_target_batches
    assert build_method("minent", segmentor(), [], {}).wants_target_batches
    # the BatchNorm control: target images only pass through train-mode BatchNorm, so it needs them
    assert build_method("source_only", segmentor(), [], {"target_bn_stats": True}).wants_target_batches


@pytest.mark.parametrize("name,expected", [
    ("adaptsegnet", {"discriminator": "fc", "adv_weights": (0.001, 0.0002), "ndf": 64, "seg_aux_weight": 0.1}),
    ("apoda", {"discriminator": "fc", "adv_weights": (0.001, 0.0002), "ndf": 64, "seg_aux_weight": 0.1}),
    ("advent", {"discriminator": "fc", "adv_weights": (0.001, 0.0002), "ndf": 64, "seg_aux_weight": 0.1,
                "minent_weights": (0.0, 0.0)}),
    ("minent", {"seg_aux_weight": 0.1, "entropy_weights": (0.001, 0.0002)}),
    ("source_only", {"seg_aux_weight": 0.1, "target_bn_stats": False}),
])
def test_each_adversarial_and_entropy_method_keeps_its_references_defaults_literally(name, expected):
    from uda_perturb.registry import METHODS

    params = inspect.signature(METHODS.get(name).__init__).parameters
    got = {k: p.default for k, p in params.items() if k in expected}
    assert got == expected


def test_minent_terms_follow_each_levels_weight_at_the_step():
    from uda_perturb.losses import entropy_loss

    source, target = step_batches()
    method = build_method("advent", segmentor(multi_level=True), [], {"ndf": 4, "minent_weights": [0.001]})
    state = method.forward_domains(source, target)
    losses = method.generator_losses(state)
    assert "ent_aux" not in losses  # one weight: the main level only
    up_t = F.interpolate(state.target.logits, (32, 32), mode="bilinear", align_corners=True)
    torch.testing.assert_close(losses["ent_main"], 0.001 * entropy_loss(up_t))
    zero = build_method("advent", segmentor(multi_level=True), [], {"ndf": 4, "minent_weights": [0.0, 0.0002]})
    assert {k for k in zero.generator_losses(zero.forward_domains(source, target)) if k.startswith("ent")} == {
        "ent_aux"}  # a weight of 0 adds no term


def test_a_fresh_step_state_and_result_hold_nothing_but_what_they_were_given():
    from uda_perturb.methods.base import StepResult, StepState

    a = StepState("out", "labels", (4, 6))
    optional = ("target", "target_size", "mixed_labels", "mixed_weights", "pseudo_labels", "pseudo_weights",
                "teacher_image", "source_batch", "target_batch")
    assert all(getattr(a, f) is None for f in optional)
    r, q = StepResult({"seg": 1.0}), StepResult({"seg": 2.0})
    assert r.discriminator_losses == {} and r.perturbation == {} and r.total == 1.0
    assert r.discriminator_losses is not q.discriminator_losses and r.perturbation is not q.perturbation


def test_the_aux_level_counts_only_with_both_its_features_and_its_logits():
    method = build_method("adaptsegnet", segmentor(multi_level=True), [], {})
    source, _ = step_batches()
    out = method.segmentor.forward_all(source["image"])
    assert list(method.levels(out, (32, 32))) == ["main", "aux"]
    out.aux_features = None  # a model that returns aux logits only
    assert list(method.levels(out, (32, 32))) == ["main"]


class _PlainAddon(torch.nn.Module):
    """An add-on with neither ``needs_target`` nor ``discriminator_losses``: the template's defaults apply."""

    def forward(self, method, state):
        return {"plain": state.source.logits.mean() * 0.0}, {"plain_seen": 1.0}


def test_an_add_on_without_needs_target_or_discriminator_losses_adds_neither():
    from uda_perturb.methods.adaptsegnet import AdaptSegNet
    from uda_perturb.methods.source_only import SourceOnly

    assert not SourceOnly(segmentor(), [_PlainAddon()]).wants_target_batches
    method = AdaptSegNet(segmentor(), [_PlainAddon()], ndf=8)
    source, target = step_batches()
    result = method.training_step(source, target)
    assert set(result.discriminator_losses) == {"d_main"} and result.perturbation == {"plain_seen": 1.0}
    assert "plain" in result.generator_losses


def test_source_only_hands_add_ons_the_target_at_its_image_size():
    method = build_method("source_only", segmentor(), ["perturbation"], {})
    source, target = step_batches()
    target["image"] = target["image"][..., :24]  # a target of another width
    state = method.forward_domains(source, target)
    assert state.target_size == (32, 24) and state.source_size == (32, 32)
    assert state.target.logits.shape[-1] < state.source.logits.shape[-1]
