"""Perturber settings by value: how attack / defense specs become weighted terms (names, configs, ``{name:
weight}``, modules, the ``*_weights`` overrides), the documented defaults, the statistics' defaults, and the
argument errors in full."""
import pytest
import torch
from helpers import raises_exactly
from torch import nn

from uda_perturb import Perturber
from uda_perturb.defenses import CrossEntropyDefense, KLDefense
from uda_perturb.objective_spec import resolve as _resolve
from uda_perturb.perturb import PerturbStats, _summary
from uda_perturb.registry import DEFENSES


def terms(spec, weights=None):
    return [(t.name, t.weight, type(t.module)) for t in _resolve(DEFENSES, spec, weights)]


def test_every_spec_form_resolves_to_named_weighted_terms():
    assert terms("ce") == [("ce", 1.0, CrossEntropyDefense)]
    assert terms(KLDefense()) == [("KLDefense", 1.0, KLDefense)]
    assert terms({"ce": 0.5, "kl": 2}) == [("ce", 0.5, CrossEntropyDefense), ("kl", 2.0, KLDefense)]
    assert terms({"name": "kl"}) == [("kl", 1.0, KLDefense)]
    assert terms({"name": "kl", "weight": 3}) == [("kl", 3.0, KLDefense)]
    assert terms(["ce", {"name": "kl", "weight": 0.1}]) == [("ce", 1.0, CrossEntropyDefense),
                                                           ("kl", 0.1, KLDefense)]


def test_weights_override_only_the_terms_they_name():
    assert terms(["ce", "kl"], {"kl": 0.25}) == [("ce", 1.0, CrossEntropyDefense), ("kl", 0.25, KLDefense)]
    assert terms({"name": "ce", "weight": 3}, {"ce": 0.5}) == [("ce", 0.5, CrossEntropyDefense)]
    assert terms(KLDefense(), {"KLDefense": 4}) == [("KLDefense", 4.0, KLDefense)]
    with pytest.raises(ValueError, match=r"^at least one defense is needed$"):
        _resolve(DEFENSES, [], None)


def test_documented_defaults():
    p = Perturber()
    assert (p.eps, p.steps, p.alpha, p.norm, p.eps_mode) == (0.1, 1, 0.1, "l2", "relative")
    assert (p.random_start, p.project, p.bn_mode, p.discriminator_input) == (False, True, "eval", "softmax")
    assert (p.ignore_index, p.channels_last, p.track_attack_loss) == (255, True, False)
    assert p.attack_terms is None and p.defense_terms is None  # the defaults are built per call
    assert Perturber(eps=0.3, steps=3).alpha == pytest.approx(0.1)
    assert PerturbStats(1.0, 1.0, 1.0, 1.0, 1.0).attack_loss_after is None


def test_summary_of_a_move_from_a_zero_feature_is_finite_and_positive():
    f0 = torch.zeros(1, 3, 1, 2)
    f0[0, :, 0, 1] = torch.tensor([3.0, 4.0, 0.0])  # norm 5 at the second position, 0 at the first
    delta = torch.zeros(1, 3, 1, 2)
    delta[0, 0] = 1.0  # norm 1 at both positions
    s = _summary(delta, f0.norm(dim=1, keepdim=True), torch.tensor([True, False]), 0.5)
    assert s.mean_norm == 1.0 and s.max_norm == 1.0 and s.fraction_perturbed == 0.5
    assert s.mean_relative_norm == pytest.approx((1 / 1e-12 + 1 / 5) / 2)


def test_argument_errors_in_full():
    with pytest.raises(ValueError, match=r"^norm must be one of \('l2', 'linf'\), got 'l1'$"):
        Perturber(norm="l1")
    with pytest.raises(ValueError, match=r"^eps_mode must be one of \('absolute', 'relative'\), got 'x'$"):
        Perturber(eps_mode="x")


def test_more_argument_errors_in_full():
    from uda_perturb.models.discriminators import DISCRIMINATOR_INPUTS

    for kwargs, text in [({"eps": 0}, "eps must be positive, got 0"),
                         ({"steps": 1.5}, "steps must be a positive integer, got 1.5"),
                         ({"steps": 0}, "steps must be a positive integer, got 0"),
                         ({"alpha": 0}, "alpha must be positive, got 0"),
                         ({"bn_mode": "train"}, "bn_mode must be 'eval' or 'batch', got 'train'"),
                         ({"discriminator_input": "x"},
                          f"discriminator_input must be one of {DISCRIMINATOR_INPUTS} or a callable, got 'x'"),
                         ({"defense_bn_mode": "batch"}, "defense_bn_mode must be 'train' or 'eval', got 'batch'")]:
        with raises_exactly(ValueError, text):
            Perturber(**kwargs)


identity = nn.Identity()  # a classifier module with nothing to freeze


@pytest.mark.parametrize("call, error, text", [
    (lambda p: p.perturb(torch.zeros(2, 3, 4, 4), lambda f: None, domain="target", modules=[]), TypeError,
     "the classifier returned a NoneType, not a logits tensor: pass a callable from features to one B x K x h x w "
     "tensor"),  # no way to pick logits from it: no hint
    (lambda p: p.perturb(torch.zeros(2, 3, 4), identity), ValueError,
     "features must be a B x C x h x w tensor, got (2, 3, 4)"),
    (lambda p: p.perturb([1.0], identity), ValueError, "features must be a B x C x h x w tensor, got list"),
    (lambda p: p.perturb(torch.zeros(2, 3, 4, 4, dtype=torch.long), identity), TypeError,
     "features must be floating point, got torch.int64"),
    (lambda p: p.perturb(torch.full((2, 3, 4, 4), float("nan")), identity), ValueError,
     "features contain NaN or Inf; refusing to perturb them"),
    (lambda p: p.perturb(torch.zeros(2, 3, 4, 4), identity, domain="x"), ValueError,
     "domain must be one of ('source', 'target'), got 'x'"),
    (lambda p: p.perturb(torch.zeros(2, 3, 4, 4), identity, labels=torch.zeros(3, 4, 4, dtype=torch.long)),
     ValueError, "labels must be B x H x W with B=2, got (3, 4, 4)"),
    (lambda p: p.perturb(torch.zeros(2, 3, 4, 4), identity, labels=torch.full((2, 4, 4), 0.5)), TypeError,
     "labels must hold whole class ids; got torch.float32 values such as 0.5"),
    (lambda p: p.perturb(torch.zeros(2, 3, 4, 4), identity, labels=torch.tensor([0.0] * 31 + [2.5]).view(2, 4, 4)),
     TypeError, "labels must hold whole class ids; got torch.float32 values such as 2.5"),  # the one value named
    (lambda p: Perturber(["discriminator"]).perturb(torch.ones(2, 3, 4, 4), identity, domain="target",
                                                    discriminator=identity, clean_logits=torch.ones(2, 3, 4, 4)),
     ValueError, "a discriminator attack without labels needs output_size=(H, W): the image size the discriminator "
     "judges (or clean_logits already at that size, or upsample= your own upsampler); without it D would see "
     "feature-resolution maps"),  # clean logits at the features' size are no pixel size
    (lambda p: p.perturb(torch.zeros(2, 3, 4, 4), identity, labels=torch.full((2, 4, 4), 3)), ValueError,
     "labels hold values [3] outside [0, 3) other than the ignore index 255"),
    (lambda p: p.perturb(torch.zeros(1, 3, 4, 4), identity, labels=torch.arange(3, 19).view(1, 4, 4)), ValueError,
     "labels hold values [3, 4, 5, 6, 7, 8, 9, 10, 11, 12] outside [0, 3) other than the ignore index 255"),
    (lambda p: Perturber(["random", "classifier"]).perturb(torch.ones(2, 3, 4, 4), identity), ValueError,
     "control perturbation 'random' replaces the attacks: use it alone, not with ['classifier']"),
    (lambda p: Perturber(["discriminator"]).perturb(torch.ones(2, 3, 4, 4), identity), ValueError,
     "attack 'discriminator' needs a discriminator: pass discriminator=..."),
    (lambda p: Perturber(defenses="ce").perturb(torch.ones(2, 3, 4, 4), identity, domain="target"), ValueError,
     "defense 'ce' needs labels; on unlabelled target features use 'kl', 'entropy' or 'pseudo_ce'"),
    (lambda p: p.perturb(torch.ones(2, 3, 4, 4), identity), ValueError,  # domain="target" forgotten
     "defense 'ce' needs labels and none were given: for unlabelled target features pass domain='target' (its "
     "default defense is 'kl'); for source features pass labels=..."),
])
def test_input_errors_in_full(call, error, text):
    with raises_exactly(error, text):
        call(Perturber())


def test_default_terms_follow_the_discriminator_and_the_domain_on_one_perturber():
    p = Perturber()
    assert [t.name for t in p._attacks_for(None)] == ["classifier"]
    assert [t.name for t in p._attacks_for(torch.nn.Identity())] == ["classifier", "discriminator"]
    assert [t.name for t in p._attacks_for(None)] == ["classifier"]
    assert [t.name for t in p._defenses_for("source")] == ["ce"]
    assert [t.name for t in p._defenses_for("target")] == ["kl"]


def test_perturb_and_defend_defaults():
    import inspect

    from uda_perturb import perturb_and_defend

    params = inspect.signature(perturb_and_defend).parameters
    assert (params["eps"].default, params["steps"].default, params["domain"].default) == (0.1, 1, "source")
    assert inspect.signature(Perturber.perturb).parameters["measure"].default is False
