"""Perturber settings by value: how attack / defense specs become weighted terms (names, configs, ``{name:
weight}``, modules, the ``*_weights`` overrides), the documented defaults, the statistics' defaults, and the
argument errors in full."""
import pytest
import torch

from uda_perturb import Perturber
from uda_perturb.defenses import CrossEntropyDefense, KLDefense
from uda_perturb.perturb import PerturbStats, _resolve, _summary
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
    s = _summary(delta, f0, torch.tensor([True, False]), 0.5, None)
    assert s.mean_norm == 1.0 and s.max_norm == 1.0 and s.fraction_perturbed == 0.5
    assert s.mean_relative_norm == pytest.approx((1 / 1e-12 + 1 / 5) / 2)


def test_argument_errors_in_full():
    with pytest.raises(ValueError, match=r"^norm must be one of \('l2', 'linf'\), got 'l1'$"):
        Perturber(norm="l1")
    with pytest.raises(ValueError, match=r"^eps_mode must be one of \('absolute', 'relative'\), got 'x'$"):
        Perturber(eps_mode="x")
