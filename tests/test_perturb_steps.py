"""The attack loop by value on hand-made objectives (features are the logits): steps inside the ball are not
stretched by the projection, a position moved at an earlier step stays moved, the objective recorded before
the attack is its value at f, the attack loss at f* when asked for, random starts fill the ball on both sides
and stay in it, a gradient-free control's statistics, and objectives without the optional attributes."""
import torch
from torch import nn

from uda_perturb import Perturber
from uda_perturb.perturb_geometry import random_start


class Channel0(nn.Module):
    """Objective: the sum of channel 0, a constant gradient e_0 at every position."""

    def forward(self, ctx, f, logits):
        return f[:, 0].sum()


class DownToOne(nn.Module):
    """Objective maximised by lowering channel 0 while it is above 1; no gradient once it is below."""

    def forward(self, ctx, f, logits):
        return -torch.relu(f[:, 0] - 1).sum()


class Mean(nn.Module):
    """A defense without the optional ``needs_labels`` attribute."""

    def forward(self, ctx, logits):
        return logits.mean()


identity = nn.Identity()  # a classifier module with nothing to freeze


def features(value=0.0):
    f = torch.zeros(2, 3, 2, 2)
    f[:, 0] = value
    return f


def absolute(attack, **kw):
    return Perturber(attack, Mean(), eps_mode="absolute", **kw)


def test_steps_inside_the_ball_are_not_stretched_by_the_projection():
    f0 = features()
    out, stats, _ = absolute(Channel0(), eps=1.0, steps=2, alpha=0.1).perturb(f0, identity, domain="target")
    expected = f0.clone()
    expected[:, 0] += 0.2
    torch.testing.assert_close(out, expected)
    assert stats.fraction_perturbed == 1.0


def test_a_position_moved_at_an_earlier_step_stays_moved():
    f0 = features(1.05)
    out, _, _ = absolute(DownToOne(), eps=0.2, steps=2, alpha=0.1).perturb(f0, identity, domain="target")
    torch.testing.assert_close(out[:, 0], torch.full((2, 2, 2), 0.95))  # the second step had no gradient


def test_the_objective_before_the_attack_and_at_f_star():
    f0 = features(0.5)
    p = absolute(Channel0(), eps=1.0, steps=2, alpha=0.1)
    out, stats, _ = p.perturb(f0, identity, domain="target")
    assert stats.attack_loss_before == 0.5 * 8 and stats.attack_loss_after is None  # not measured by default
    _, measured, _ = p.perturb(f0, identity, domain="target", measure=True)
    assert abs(measured.attack_loss_after - 0.7 * 8) < 1e-5
    tracked = absolute(Channel0(), eps=1.0, steps=2, alpha=0.1, track_attack_loss=True)(f0, identity,
                                                                                       domain="target")
    assert abs(tracked.stats.attack_loss_after - 0.7 * 8) < 1e-5
    assert abs(float(tracked.loss) - float(out.mean())) < 1e-6  # the defense without needs_labels, on target


def test_random_starts_fill_the_ball_on_both_sides_and_stay_in_it():
    torch.manual_seed(0)
    f0, r = torch.zeros(4, 8, 16, 16), torch.tensor(0.5)
    s = random_start(f0, r, "linf")
    assert s.abs().max() <= 0.5 and s.min() < -0.45 and s.max() > 0.45
    n = random_start(f0, r, "l2").norm(dim=1)
    assert n.max() <= 0.5 + 1e-6 and n.max() > 0.45 and n.min() >= 0


def test_a_control_reports_the_share_it_moved_and_no_objective():
    f0 = torch.ones(1, 3, 1, 2)
    f0[0, :, 0, 1] = 0.0  # a zero feature: radius 0 in relative mode
    out, stats, _ = Perturber("random", eps=0.1).perturb(f0, identity, domain="target")
    assert stats.fraction_perturbed == 0.5 and stats.attack_loss_before == 0.0
    assert torch.equal(out[0, :, 0, 1], torch.zeros(3))


class Signed(nn.Module):
    """Objective with a constant gradient of mixed signs: +1, -1, +1 on the three channels."""

    def forward(self, ctx, f, logits):
        return (f * torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1)).sum()


def test_linf_steps_are_clipped_to_the_box_on_both_sides():
    f = torch.randn(2, 3, 2, 2)
    # alpha = eps: the first step reaches the box's faces, the next two would leave it and are clipped back
    fstar, _, _ = absolute(Signed(), eps=0.1, steps=3, alpha=0.1, norm="linf").perturb(f, identity)
    expected = 0.1 * torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1).expand_as(f)
    torch.testing.assert_close(fstar - f, expected)
