"""Control perturbations: ``random`` (a random direction at exactly the attack's per-position radius, no
gradient pass) and ``dropout`` (channel dropout of the features), registered beside the attacks."""
import pytest
import torch
from helpers import tiny_config

import uda_perturb as up
from uda_perturb.engine import Trainer


def head_and_features():
    head = torch.nn.Sequential(torch.nn.Conv2d(6, 6, 1), torch.nn.BatchNorm2d(6), torch.nn.Conv2d(6, 3, 1))
    return head.train(), torch.randn(2, 6, 4, 5) * 3


@pytest.mark.parametrize("norm,mode", [("l2", "relative"), ("l2", "absolute"), ("linf", "relative"),
                                       ("linf", "absolute")])
def test_random_control_has_the_attack_radius_and_no_gradient_pass(monkeypatch, norm, mode):
    head, f = head_and_features()
    bn_before = head[1].running_mean.clone()

    def no_grad_pass(*a, **k):
        raise AssertionError("the random control must not take a gradient")

    monkeypatch.setattr(torch.autograd, "grad", no_grad_pass)
    perturber = up.Perturber("random", eps=0.2, norm=norm, eps_mode=mode)
    perturbed, stats, _ = perturber.perturb(f, head, labels=torch.randint(0, 3, (2, 4, 5)))
    delta = perturbed - f
    fnorm = f.norm(dim=1)
    if norm == "l2":
        expected = 0.2 * fnorm if mode == "relative" else torch.full_like(fnorm, 0.2)
        torch.testing.assert_close(delta.norm(dim=1), expected)
    else:
        expected = 0.2 * fnorm / 6 ** 0.5 if mode == "relative" else torch.full_like(fnorm, 0.2)
        torch.testing.assert_close(delta.abs(), expected[:, None].expand_as(delta))
    assert all(p.grad is None for p in head.parameters()) and torch.equal(head[1].running_mean, bn_before)
    assert stats.fraction_perturbed == 1.0 and head.training
    res = perturber(f, head, labels=torch.randint(0, 3, (2, 4, 5)))
    res.loss.backward()  # the defense still trains the classifier
    assert head[0].weight.grad is not None


def test_random_directions_differ_from_the_adversarial_one():
    head, f = head_and_features()
    y = torch.randint(0, 3, (2, 4, 5))
    adv = up.perturb_and_defend(f, head, labels=y, attacks="classifier", eps=0.2).perturbed - f
    rnd = up.perturb_and_defend(f, head, labels=y, attacks="random", eps=0.2).perturbed - f
    cos = torch.nn.functional.cosine_similarity(adv, rnd, dim=1)
    assert cos.abs().mean() < 0.6
    assert up.perturb_and_defend(f, head, labels=y, attacks="classifier", eps=0.2).loss > \
        up.perturb_and_defend(f, head, labels=y, attacks="random", eps=0.2).loss - 1e-6


def test_dropout_control_zeroes_or_rescales_whole_channels():
    _, f = head_and_features()
    head = torch.nn.Conv2d(6, 3, 1)
    res = up.perturb_and_defend(f, head, labels=torch.randint(0, 3, (2, 4, 5)),
                                attacks={"name": "dropout", "rate": 0.25})
    out = res.perturbed
    for b in range(2):
        for c in range(6):
            zero = torch.equal(out[b, c], torch.zeros_like(out[b, c]))
            assert zero or torch.allclose(out[b, c], f[b, c] / 0.75)
    with pytest.raises(ValueError, match="rate"):
        up.build_attack("dropout", rate=1.0)


def test_controls_are_registered_and_replace_the_attacks():
    assert {"random", "dropout"} <= set(up.list_attacks())
    head, f = head_and_features()
    with pytest.raises(ValueError, match="replaces the attacks"):
        up.perturb_and_defend(f, head, labels=torch.randint(0, 3, (2, 4, 5)), attacks=["random", "classifier"])


def test_apoda_with_the_random_control_trains(tmp_path):
    opts = "method.options={ndf: 4, perturbation: {source_attacks: [random], target_attacks: [random]}}"
    Trainer(tiny_config("apoda", "train.iters=2", opts), tmp_path / "r", progress=False).fit()
    last = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"g/def_source"' in last and '"g/def_target"' in last
