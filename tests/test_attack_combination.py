"""How several attack objectives make one step (``combine``): ``balanced`` lets each count by its weight however
small its gradient, ``sum`` is the earlier rule, ``separate`` makes one f* per objective. Directions are
checked against formulas written here; the toy at the end trains a discriminator and attacks it."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import uda_perturb as up
from uda_perturb import Perturber

B, C, K, H, W = 2, 8, 3, 5, 6


def unit(g):
    return g / g.norm(dim=1, keepdim=True)


def cosines(a, b):
    """Per-position cosine over channels, flattened."""
    return ((unit(a) * unit(b)).sum(1)).flatten()


class LinearD(nn.Module):
    """A per-position linear discriminator on features, its weights scaled by ``scale``."""

    def __init__(self, scale=1.0, seed=3):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(C, 1, 1)
        with torch.no_grad():
            self.conv.weight.mul_(scale)

    def forward(self, x):
        return self.conv(x)


def problem(seed=0, d_scale=0.01):
    torch.manual_seed(seed)
    clf = nn.Conv2d(C, K, 1)
    with torch.no_grad():
        clf.weight.mul_(3.0)
    f = torch.randn(B, C, H, W)
    y = torch.randint(0, K, (B, H, W))
    return clf, LinearD(d_scale), f, y


def gradients(clf, D, f, y):
    """The two objectives' input gradients, written out: CE of the classifier, BCE of D towards source (0)."""
    f = f.clone().requires_grad_(True)
    (g_c,) = torch.autograd.grad(F.cross_entropy(clf(f), y, ignore_index=255), f)
    z = D(f)
    (g_d,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(z, torch.zeros_like(z)), f)
    return g_c, g_d


def attack(clf, D, f, y, **kw):
    return Perturber(["classifier", "discriminator"], eps=0.5, eps_mode="absolute", discriminator_input="features",
                     **kw).perturb(f, clf, labels=y, discriminator=D)


def test_a_discriminator_a_hundred_times_weaker_still_steers_the_default_step():
    clf, D, f, y = problem()
    g_c, g_d = gradients(clf, D, f, y)
    ratio = (g_d.norm(dim=1).mean() / g_c.norm(dim=1).mean()).item()
    assert 0.002 < ratio < 0.05, ratio  # the regime of the finding: D's gradient about 100x smaller
    fstar, stats, _ = attack(clf, D, f, y)
    step = fstar - f
    # mean over positions, as the statistics report it (each position: sqrt((1 + cos(g_c, g_d)) / 2) > 0)
    assert cosines(step, g_c).mean() >= 0.5 and cosines(step, g_d).mean() >= 0.5
    assert cosines(step, g_c).min() > 0 and cosines(step, g_d).min() > 0
    # the summed loss's step is the classifier's alone
    fsum, _, _ = attack(clf, D, f, y, combine="sum")
    assert cosines(fsum - f, g_c).mean() > 0.99 and cosines(fsum - f, g_d).mean() < 0.2
    # the statistics say so: the step's mean cosine with each objective, each one's gradient-norm share, and the
    # cosine between the two objectives' own directions (the step's cosines follow from it: sqrt((1 + c) / 2))
    assert stats.objectives["classifier"].step_cosine == pytest.approx(float(cosines(step, g_c).mean()), abs=1e-4)
    assert stats.objectives["discriminator"].step_cosine == pytest.approx(float(cosines(step, g_d).mean()), abs=1e-4)
    assert stats.objectives["classifier"].grad_share == pytest.approx(1 / (1 + ratio), rel=1e-3)
    assert stats.objectives["discriminator"].grad_share == pytest.approx(ratio / (1 + ratio), rel=1e-3)
    pair = cosines(g_c, g_d)
    assert stats.direction_cosine["classifier|discriminator"] == pytest.approx(float(pair.mean()), abs=1e-4)
    torch.testing.assert_close(cosines(step, g_d), ((1 + pair) / 2).sqrt(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_balanced_step_is_the_weighted_sum_of_unit_directions_normalised(norm):
    clf, D, f, y = problem(seed=1)
    g_c, g_d = gradients(clf, D, f, y)
    # Linf with equal weights: a channel moves where the two signs agree and stays where they differ
    w_c, w_d = (1.0, 0.5) if norm == "l2" else (1.0, 1.0)
    fstar, _, _ = attack(clf, D, f, y, norm=norm, attack_weights={"classifier": w_c, "discriminator": w_d})
    if norm == "l2":
        expected = 0.5 * unit(w_c * unit(g_c) + w_d * unit(g_d))
    else:
        expected = 0.5 * (w_c * g_c.sign() + w_d * g_d.sign()).sign()
    torch.testing.assert_close(fstar - f, expected, atol=1e-5, rtol=1e-4)


def test_a_negative_weight_turns_its_direction_round():
    clf, D, f, y = problem(seed=2)
    g_c, g_d = gradients(clf, D, f, y)
    fstar, _, _ = attack(clf, D, f, y, attack_weights={"discriminator": -1.0})
    torch.testing.assert_close(fstar - f, 0.5 * unit(unit(g_c) - unit(g_d)), atol=1e-5, rtol=1e-4)


def test_sum_is_the_normalised_gradient_of_the_summed_losses():
    clf, D, f, y = problem(seed=3)
    g_c, g_d = gradients(clf, D, f, y)
    fstar, stats, _ = attack(clf, D, f, y, combine="sum", steps=1)
    torch.testing.assert_close(fstar - f, 0.5 * unit(g_c + g_d), atol=1e-5, rtol=1e-4)
    # not free under sum: the cosines only when asked; then they say what the sum followed
    assert all(math.isnan(s.step_cosine) and math.isnan(s.grad_share) for s in stats.objectives.values())
    _, asked, _ = attack(clf, D, f, y, combine="sum", objective_stats=True)
    step = fstar - f
    for name, g in (("classifier", g_c), ("discriminator", g_d)):
        assert asked.objectives[name].step_cosine == pytest.approx(float(cosines(step, g).mean()), abs=1e-4)
    assert asked.objectives["classifier"].step_cosine > 0.99  # D's gradient is 100x smaller here


def test_an_objective_without_gradient_at_a_position_leaves_it_to_the_other():
    clf, D, f, y = problem(seed=4)
    y[0, 0, :] = 255  # the classifier has no gradient on this row; D has
    g_c, g_d = gradients(clf, D, f, y)
    fstar, stats, _ = attack(clf, D, f, y)
    torch.testing.assert_close((fstar - f)[0, :, 0], 0.5 * unit(g_d)[0, :, 0], atol=1e-5, rtol=1e-4)
    assert stats.fraction_perturbed == 1.0
    # with the classifier alone those positions stay put, as before
    alone, _, _ = Perturber(["classifier"], eps=0.5, eps_mode="absolute").perturb(f, clf, labels=y)
    assert torch.all(alone[0, :, 0] == f[0, :, 0])


@pytest.mark.parametrize("steps", [1, 3])
def test_separate_gives_each_objective_its_own_attack_and_averages_the_defense(steps):
    clf, D, f, y = problem(seed=5)
    kw = dict(eps=0.5, eps_mode="absolute", discriminator_input="features", steps=steps)
    both = up.perturb_and_defend(f, clf, labels=y, discriminator=D, attacks=["classifier", "discriminator"],
                                 combine="separate", **kw)
    singles = [up.perturb_and_defend(f, clf, labels=y, discriminator=D, attacks=[name], **kw)
               for name in ("classifier", "discriminator")]
    assert both.perturbed.shape == (2 * B, C, H, W)
    for chunk, single in zip(both.perturbed.chunk(2), singles):
        assert torch.equal(chunk, single.perturbed)
    torch.testing.assert_close(both.loss, (singles[0].loss + singles[1].loss) / 2)
    torch.testing.assert_close(both.adv_logits, torch.cat([s.adv_logits for s in singles]))
    assert both.stats.objectives["discriminator"].step_cosine == pytest.approx(1.0, abs=1e-5)


def test_one_objective_is_the_same_under_every_rule():
    clf, D, f, y = problem(seed=6)
    outs = [Perturber(["classifier"], eps=0.5, combine=c).perturb(f, clf, labels=y)[0]
            for c in ("balanced", "sum", "separate")]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match=r"combine must be one of \('balanced', 'sum', 'separate'\), got 'mean'"):
        Perturber(combine="mean")


def test_a_saturated_objective_still_has_a_unit_direction():
    """A gradient of ~1e-30 per position (a very confident discriminator) is a direction, not zero."""
    from uda_perturb.attack_combination import balanced_direction, unit_l2

    g_big = torch.zeros(1, 2, 1, 1)
    g_big[0, 0] = 1.0
    g_tiny = torch.zeros(1, 2, 1, 1)
    g_tiny[0, 1] = 1e-30
    units = [unit_l2(g)[0] for g in (g_big, g_tiny)]
    torch.testing.assert_close(balanced_direction([g_big, g_tiny], units, [1.0, 1.0], "l2"), torch.ones(1, 2, 1, 1))
    torch.testing.assert_close(unit_l2(3e-25 * torch.tensor([3.0, 4.0]).view(1, 2, 1, 1))[1],
                               torch.full((1, 1, 1, 1), 1.5e-24))  # the norm too, where its squares underflow


def test_against_a_trained_discriminator_the_default_step_raises_its_loss_and_the_sum_does_not():
    """Two domains that differ only in channels 4-7, which the classifier does not read; a linear D trained on
    features to tell them apart (reading those channels only, so that a step in the classifier's channels cannot
    move it). D's gradient is then ~200x smaller than the classifier's. Attacking the source side with the
    default rule raises D's loss well above clean; the summed rule, whose step is the classifier's, does not."""
    torch.manual_seed(0)
    b, h, w = 8, 8, 8
    clf = nn.Conv2d(C, K, 1)
    with torch.no_grad():
        clf.weight[:, 4:] = 0.0
        clf.weight.mul_(10.0)
    shift = torch.zeros(1, C, 1, 1)
    shift[:, 4:] = 4.0
    f_s, f_t = torch.randn(b, C, h, w), torch.randn(b, C, h, w) + shift
    y_s = torch.randint(0, K, (b, h, w))
    D = nn.Conv2d(C, 1, 1)
    opt = torch.optim.Adam(D.parameters(), lr=0.05)
    for _ in range(1000):
        opt.zero_grad()
        z_s, z_t = D(f_s), D(f_t)
        loss = 0.5 * (F.binary_cross_entropy_with_logits(z_s, torch.zeros_like(z_s))
                      + F.binary_cross_entropy_with_logits(z_t, torch.ones_like(z_t)))
        loss.backward()
        opt.step()
        with torch.no_grad():
            D.weight[:, :4] = 0.0
    assert float(loss.detach()) < 0.01  # D tells the domains apart

    def d_loss(f):
        with torch.no_grad():
            z = D(f)
            return float(F.binary_cross_entropy_with_logits(z, torch.zeros_like(z)))

    def attacked(combine):
        rule = {} if combine is None else {"combine": combine}  # None: the default
        return up.perturb_and_defend(f_s, clf, labels=y_s, discriminator=D, discriminator_input="features",
                                     eps=0.2, objective_stats=True, **rule)

    clean, default, summed = d_loss(f_s), attacked(None), attacked("sum")
    assert default.stats.objectives["discriminator"].grad_share < 0.01  # D's gradient is the small one
    assert summed.stats.objectives["discriminator"].step_cosine < 0.05  # ... and the sum does not hear it
    # each objective's loss at f* against clean, as reported, is D's loss computed here
    for res in (default, summed):
        d = res.stats.objectives["discriminator"]
        assert d.loss_clean == pytest.approx(clean, rel=1e-5)
        assert d.loss_perturbed == pytest.approx(d_loss(res.perturbed), rel=1e-5)
    assert default.stats.objectives["discriminator"].rise > 5 * summed.stats.objectives["discriminator"].rise
    assert d_loss(default.perturbed) > 2 * clean
    assert d_loss(default.perturbed) - clean > 5 * (d_loss(summed.perturbed) - clean)


def test_objective_gradients_free_the_graph_after_the_last_unless_it_is_the_callers():
    from uda_perturb.attack_combination import objective_gradients, unit_direction

    f = torch.randn(1, 3, 2, 2, requires_grad=True)
    values = [(f ** 2).sum(), (f ** 3).sum()]
    g = objective_gradients(values, f, 2.0)
    torch.testing.assert_close(g[0], 2.0 * 2 * f.detach())
    torch.testing.assert_close(g[1], 2.0 * 3 * f.detach() ** 2)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(values[1], f)  # freed after the last objective
    kept = [(f ** 2).sum()]
    objective_gradients(kept, f, 1.0, keep_graph=True)
    torch.autograd.grad(kept[0], f)  # the caller's graph survives
    # unit_direction's L2 branch without a precomputed norm: g / |g| at each position
    x = torch.tensor([[[[3.0]], [[4.0]]]])
    torch.testing.assert_close(unit_direction(x, "l2"), torch.tensor([[[[0.6]], [[0.8]]]]))


def test_unit_l2_takes_one_norm_where_it_is_safe_and_scales_each_position_where_it_is_not():
    from uda_perturb.attack_combination import unit_l2

    torch.manual_seed(0)
    g = torch.randn(2, 6, 3, 4)
    u, n = unit_l2(g)  # every norm in [1e-15, 1e19]: one norm, no scaling
    torch.testing.assert_close(n, g.double().norm(dim=1, keepdim=True).float())
    torch.testing.assert_close(u, g / g.double().norm(dim=1, keepdim=True).float())
    u_cl, n_cl = unit_l2(g.contiguous(memory_format=torch.channels_last))  # the other norm kernel, the same values
    torch.testing.assert_close((u_cl, n_cl), (u, n))
    # positions whose squares under- or overflow float32, and a zero one, in the same tensor: scaled per position
    g[0, :, 0, 0] = 1e-25 * torch.arange(1.0, 7.0)
    g[0, :, 0, 1] = 1e25 * torch.arange(1.0, 7.0)
    g[1, :, 2, 3] = 0.0
    u, n = unit_l2(g)
    exact = g.double().norm(dim=1, keepdim=True)
    torch.testing.assert_close(n.double(), exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(u.double(), g.double() / exact.clamp_min(1e-300), rtol=1e-5, atol=1e-7)
    assert torch.isfinite(u).all() and u[1, :, 2, 3].abs().sum() == 0


def test_unit_direction_keeps_its_input_unless_in_place_and_balanced_weights_scale_each_direction():
    from uda_perturb.attack_combination import balanced_direction, unit_direction, unit_l2

    torch.manual_seed(1)
    g = torch.randn(2, 4, 3, 3)
    keep = g.clone()
    torch.testing.assert_close(unit_direction(g, "l2"), keep / keep.norm(dim=1, keepdim=True))
    assert torch.equal(g, keep)  # not in place unless asked
    assert unit_direction(g, "l2", in_place=True).data_ptr() == g.data_ptr()
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    ua, ub = unit_l2(a)[0], unit_l2(b)[0]
    kept = ua.clone()
    torch.testing.assert_close(balanced_direction([a, b], [ua, ub], [2.0, 0.5], "l2"), 2.0 * ua + 0.5 * ub)
    torch.testing.assert_close(balanced_direction([a, b], [ua, ub], [2.0, 0.5], "linf"),
                               2.0 * a.sign() + 0.5 * b.sign())
    assert torch.equal(ua, kept)  # the statistics still read the parts


def test_the_fused_balanced_sum_is_the_sum_of_unit_directions_and_statistics_change_no_step():
    from uda_perturb.attack_combination import balanced_direction, balanced_l2, unit_l2

    torch.manual_seed(2)
    a, b = torch.randn(2, 4, 3, 3), 1e-6 * torch.randn(2, 4, 3, 3)
    units = [unit_l2(a)[0], unit_l2(b)[0]]
    torch.testing.assert_close(balanced_l2([a, b], [2.0, 0.5]), balanced_direction([a, b], units, [2.0, 0.5], "l2"))
    b[0, :, 0, 0] = 0.0  # a position without gradient: the scaled route decides, not the fused one
    assert balanced_l2([a, b], [1.0, 1.0]) is None
    # the same f* whether or not the per-objective statistics are measured
    clf, disc = nn.Conv2d(C, K, 1), nn.Conv2d(K, 1, 1)
    f, y = torch.randn(2, C, 5, 5), torch.randint(0, K, (2, 5, 5))
    runs = [up.Perturber(["classifier", "discriminator"], objective_stats=s).perturb(f, clf, labels=y,
                                                                                     discriminator=disc)[0]
            for s in (False, True)]
    assert torch.equal(runs[0], runs[1])
