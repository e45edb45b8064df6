"""The target defense compares like with like: its clean reference is taken in the defense pass's own mode, so at
eps -> 0 every defense loss -> 0 for both ``defense_bn_mode``s, with or without the caller's clean logits, on a
head with BatchNorm and dropout; the reference forward trains nothing."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import uda_perturb as up

K = 5


def head(dropout=0.3):
    torch.manual_seed(0)
    drop = nn.Dropout2d(dropout) if dropout else nn.Identity()  # without it, only BatchNorm's mode differs
    h = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), drop, nn.Conv2d(16, K, 1))
    with torch.no_grad():  # running statistics far from this batch's: the train/eval gap is large
        h[1].running_mean.fill_(0.5)
        h[1].running_var.fill_(3.0)
    return h.train()


@pytest.mark.parametrize("defense_bn_mode", ["train", "eval"])
@pytest.mark.parametrize("caller_logits", [True, False])
@pytest.mark.parametrize("dropout, bn_mode", [(0.3, "eval"), (0.0, "eval"), (0.0, "batch")])
def test_at_eps_to_zero_the_defense_sees_no_difference(defense_bn_mode, caller_logits, dropout, bn_mode):
    h = head(dropout)  # with dropout every pass draws new masks; without it only BatchNorm's mode differs
    torch.manual_seed(1)
    f = torch.randn(2, 8, 6, 6)
    clean = h(f) if caller_logits else None  # the caller's own train-mode forward, its own dropout masks
    out = up.perturb_and_defend(f, h, domain="target", defenses=["kl", {"name": "pseudo_ce", "threshold": 0.0}],
                                eps=1e-7, clean_logits=clean, defense_bn_mode=defense_bn_mode, bn_mode=bn_mode)
    assert float(out.losses["kl"].detach()) < 1e-6, float(out.losses["kl"].detach())
    # pseudo-labels from the reference of the defense's mode: at eps -> 0 they are the defense pass's own argmax
    adv = out.adv_logits.detach()
    expected = F.cross_entropy(adv, adv.argmax(1))
    torch.testing.assert_close(out.losses["pseudo_ce"].detach(), expected, atol=1e-5, rtol=1e-5)
    out.loss.backward()  # the defense pass's graph survives the reference forward
    assert h[4].weight.grad is not None


def test_the_reference_forward_updates_no_statistics_and_keeps_the_defense_pass_random():
    h = head()
    torch.manual_seed(2)
    f = torch.randn(2, 8, 6, 6)
    twin = copy.deepcopy(h)
    torch.manual_seed(3)
    out = up.perturb_and_defend(f, h, domain="target", eps=0.1, clean_logits=h(f).detach())
    # the same calls on the twin without the reference: its buffers after one defense pass at f*
    torch.manual_seed(3)
    twin(f)
    twin(out.perturbed)
    assert torch.equal(h[1].running_mean, twin[1].running_mean)
    assert torch.equal(h[1].num_batches_tracked, twin[1].num_batches_tracked)


def test_the_mode_gap_is_what_the_defense_measured_before():
    """The measured case: eval-mode defense against the caller's train-mode logits. Without the reference the KL
    at eps -> 0 is the mode gap itself; it is that large here, so the test above would have failed."""
    h = head()
    torch.manual_seed(1)
    f = torch.randn(2, 8, 6, 6)
    clean = h(f).detach()
    with torch.no_grad():
        p = clean.softmax(1)
        q = h.eval()(f).log_softmax(1)
    gap = float((p * (p.log() - q)).sum(1).mean())
    assert gap > 0.02  # 2000x the bound the test above holds the defense to


def test_a_label_based_defense_takes_no_reference_forward_unless_a_statistic_reads_it():
    torch.manual_seed(1)
    f = torch.randn(2, 8, 6, 6)
    y = torch.randint(0, K, (2, 6, 6))
    runs = {}
    for defenses, stats in ((["ce"], False), (["ce"], None), (["ce", "kl"], False), (["ce", "entropy"], False)):
        h = head()  # fresh running statistics: each defense pass updates them
        calls: list = []
        h.register_forward_hook(lambda m, i, o, calls=calls: calls.append(1))
        torch.manual_seed(2)
        out = up.perturb_and_defend(f, h, labels=y, defenses=defenses, clean_logits=h(f), objective_stats=stats)
        runs[(*defenses, stats)] = (len(calls), out.losses["ce"].detach(), torch.rand(1))
    # the caller's forward, the attack's own (BatchNorm: not the caller's graph), the defense pass, the reference
    assert [n for n, _, _ in runs.values()] == [3, 4, 4, 3]  # entropy reads only the perturbed prediction
    (_, ce, rng), (_, ce_stats, rng_stats) = runs[("ce", False)], runs[("ce", None)]
    assert torch.equal(ce, ce_stats) and torch.equal(rng, rng_stats)  # the same defense, the same random stream


def test_an_eval_defense_reuses_the_attacks_own_eval_mode_logits_as_its_reference():
    h = head(0.0)  # BatchNorm only
    torch.manual_seed(1)
    f = torch.randn(2, 8, 6, 6)
    calls: list = []
    h.register_forward_hook(lambda m, i, o: calls.append(1))
    out = up.perturb_and_defend(f, h, domain="target", eps=1e-7, defense_bn_mode="eval", objective_stats=False)
    assert len(calls) == 2  # the attack's forward (running statistics: the defense's mode) and the defense pass
    assert float(out.losses["kl"].detach()) < 1e-6
