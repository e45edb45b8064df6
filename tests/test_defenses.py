"""Defense losses against formulas written out in the test."""
import math

import pytest
import torch

from uda_perturb import build_defense
from uda_perturb.objective_context import ObjectiveContext


def ctx_for(clean, labels=None):
    return ObjectiveContext(classifier=lambda f: f, domain="source" if labels is not None else "target",
                            clean_logits=clean, labels=labels)


def test_ce_matches_formula_with_ignore():
    z = torch.randn(1, 3, 2, 2)
    y = torch.tensor([[[0, 2], [255, 1]]])
    logp = z.log_softmax(1)
    expected = -(logp[0, 0, 0, 0] + logp[0, 2, 0, 1] + logp[0, 1, 1, 1]) / 3
    assert build_defense("ce")(ctx_for(z, y), z).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ce_defense_uses_the_context_class_weights():
    z = torch.randn(1, 3, 2, 2)
    y = torch.tensor([[[0, 2], [255, 1]]])
    w = torch.tensor([2.0, 0.5, 1.0])
    logp = z.log_softmax(1)
    expected = -(2.0 * logp[0, 0, 0, 0] + 1.0 * logp[0, 2, 0, 1] + 0.5 * logp[0, 1, 1, 1]) / 3.5
    ctx = ObjectiveContext(classifier=lambda f: f, domain="source", clean_logits=z, labels=y, class_weights=w)
    assert build_defense("ce")(ctx, z).item() == pytest.approx(expected.item(), rel=1e-6)


def test_perturb_and_defend_passes_class_weights_to_the_source_defense():
    from uda_perturb import perturb_and_defend

    torch.manual_seed(0)
    head = torch.nn.Conv2d(4, 3, 1)
    f = torch.randn(2, 4, 3, 3)
    y = torch.randint(0, 3, (2, 3, 3))
    w = torch.tensor([3.0, 1.0, 0.2])
    out = perturb_and_defend(f, head, labels=y, attacks=["classifier"], defenses=["ce"], class_weights=w)
    expected = torch.nn.functional.cross_entropy(head(out.perturbed), y, weight=w)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_matches_formula_and_is_zero_on_clean():
    clean, adv = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    p, q = clean.softmax(1), adv.softmax(1)
    expected = (p * (p.log() - q.log())).sum(1).mean()
    kl = build_defense("kl")
    assert kl(ctx_for(clean), adv).item() == pytest.approx(expected.item(), rel=1e-5)
    assert kl(ctx_for(clean), clean).item() == pytest.approx(0.0, abs=1e-7)


def test_entropy_is_normalised_mean_entropy():
    z = torch.randn(2, 5, 3, 4)
    p = z.softmax(1)
    expected = (-(p * p.log()).sum(1) / math.log(5)).mean()
    assert build_defense("entropy")(ctx_for(z), z).item() == pytest.approx(expected.item(), rel=1e-5)
    uniform = torch.zeros(1, 5, 2, 2)
    assert build_defense("entropy")(ctx_for(uniform), uniform).item() == pytest.approx(1.0, rel=1e-6)


def test_pseudo_ce_uses_only_confident_positions():
    clean = torch.zeros(1, 2, 1, 2)
    clean[0, 0, 0, 0] = 10.0  # confident class 0
    clean[0, 1, 0, 1] = 0.1  # unconfident
    adv = torch.randn(1, 2, 1, 2)
    expected = -adv.log_softmax(1)[0, 0, 0, 0]
    got = build_defense("pseudo_ce", threshold=0.9)(ctx_for(clean), adv)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    none_confident = build_defense("pseudo_ce", threshold=0.99999)(ctx_for(torch.zeros(1, 2, 1, 2)), adv)
    assert none_confident.item() == 0.0


def test_pseudo_ce_default_keeps_positions_at_90_percent_confidence_and_drops_the_rest():
    """Default threshold 0.9: a position with clean confidence 0.95 is a pseudo-label, one with 0.6 is ignored;
    the loss is the CE of the adversarial logits at the kept position only."""
    clean = torch.zeros(1, 2, 1, 2)
    clean[0, 0, 0, 0] = math.log(0.95 / 0.05)  # p(class 0) = 0.95
    clean[0, 1, 0, 1] = math.log(0.6 / 0.4)  # p(class 1) = 0.6
    adv = torch.tensor([[[[0.3, 1.0]], [[1.2, -0.5]]]])
    ctx = ObjectiveContext(classifier=lambda f: f, domain="target", clean_logits=clean)
    expected = -torch.log_softmax(adv[0, :, 0, 0], dim=0)[0]
    assert build_defense("pseudo_ce")(ctx, adv).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradient_free_controls_have_objective_value_exactly_zero():
    """The controls displace features directly; their objective is 0 with a zero gradient, never the logits' sum."""
    from uda_perturb import build_attack

    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    ctx = ObjectiveContext(classifier=lambda f: f, domain="target", clean_logits=logits.detach())
    for name in ("random", "dropout"):
        value = build_attack(name)(ctx, torch.randn(2, 5, 4, 4), logits)
        assert value.item() == 0.0
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.equal(grad, torch.zeros_like(logits))


def test_classifier_attack_refuses_an_unknown_target_mode_naming_the_option():
    from uda_perturb import build_attack

    with pytest.raises(ValueError, match=r"^target_mode must be 'pseudo' or 'kl', got 'soft'$"):
        build_attack("classifier", target_mode="soft")


def test_dropout_control_refuses_rates_outside_the_open_interval():
    from uda_perturb import build_attack

    for rate in (0.0, 1.0):
        with pytest.raises(ValueError, match=rf"^dropout rate must be in \(0, 1\), got {rate}$"):
            build_attack("dropout", rate=rate)
