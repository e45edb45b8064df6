"""The per-objective statistics' arithmetic on hand-made tensors, against values worked out here: which positions
count (an objective without gradient there, a step that did not move there), a step that is not a unit vector, the
fallbacks when no position counts, objectives left out of a step, and the names."""
import math

import pytest
import torch

from uda_perturb.objective_stats import ObjectiveStats, ObjectiveTracker, unique_names


def vectors(*pairs):
    """``B=1 x C=2 x 1 x len(pairs)``: one 2-vector per position."""
    return torch.tensor(pairs, dtype=torch.float32).T.reshape(1, 2, 1, len(pairs))


def norms(*values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, len(values))


U1, N1 = vectors((1, 0), (0, 1), (0, 0)), norms(2, 3, 0)  # no gradient at the third position
U2, N2 = vectors((0.6, 0.8), (1, 0), (1, 0)), norms(1, 0, 5)  # none at the second
STEP = vectors((3, 4), (0, 2), (0, 0))  # norms 5, 2, 0: not a unit vector, and no move at the third


def test_cosines_shares_and_pairs_count_only_the_positions_where_both_are_nonzero():
    tracker = ObjectiveTracker(["classifier", "discriminator"])
    tracker.record([U1, U2], [N1, N2], [STEP, STEP], same_point=True)
    stats, pairs = tracker.result()
    # classifier: positions 0 and 1 (cosines 3/5 and 2/2); discriminator: position 0 only ((1.8 + 3.2) / 5)
    assert stats["classifier"].step_cosine == pytest.approx(0.8)
    assert stats["discriminator"].step_cosine == pytest.approx(1.0)
    # mean norms 5/3 and 6/3
    assert stats["classifier"].grad_share == pytest.approx(5 / 11)
    assert stats["discriminator"].grad_share == pytest.approx(6 / 11)
    # u1 . u2 where both norms are nonzero: position 0 only
    assert pairs == {"classifier|discriminator": pytest.approx(0.6)}


def test_statistics_are_means_over_the_steps():
    tracker = ObjectiveTracker(["classifier", "discriminator"])
    tracker.record([U1, U2], [N1, N2], [STEP, STEP], same_point=True)
    tracker.record([U1, U2], [N1, N2], [vectors((0, 1), (0, 1), (0, 1))] * 2, same_point=False)
    stats, pairs = tracker.result()
    # second step (unit steps everywhere): classifier 0 and 1 at positions 0, 1; discriminator 0.8 and 0 at 0, 2
    assert stats["classifier"].step_cosine == pytest.approx((0.8 + 0.5) / 2)
    assert stats["discriminator"].step_cosine == pytest.approx((1.0 + 0.4) / 2)
    # a step at another point each records no shares or pairs
    assert stats["classifier"].grad_share == pytest.approx(5 / 11)
    assert pairs["classifier|discriminator"] == pytest.approx(0.6)


def test_no_position_counting_gives_zero_not_a_made_up_agreement():
    tracker = ObjectiveTracker(["classifier", "discriminator"])
    zero = torch.zeros(1, 1, 1, 3)
    tracker.record([U1, U2], [zero, zero], [torch.zeros_like(STEP)] * 2, same_point=True)
    stats, pairs = tracker.result()
    assert stats["classifier"].step_cosine == 0.0 and stats["discriminator"].step_cosine == 0.0
    assert stats["classifier"].grad_share == 0.0
    assert pairs == {"classifier|discriminator": 0.0}


def test_an_objective_left_out_of_a_step_gets_no_cosine_and_the_step_no_shares():
    tracker = ObjectiveTracker(["classifier", "discriminator"])
    tracker.record([None, U2], [None, N2], [STEP, STEP], same_point=True)
    stats, pairs = tracker.result()
    assert math.isnan(stats["classifier"].step_cosine)
    assert stats["discriminator"].step_cosine == pytest.approx(1.0)
    assert math.isnan(stats["classifier"].grad_share) and math.isnan(stats["discriminator"].grad_share)
    assert pairs == {}


def test_unmeasured_statistics_are_nan_and_losses_set_the_rise():
    empty = ObjectiveStats()
    assert all(math.isnan(v) for v in (empty.loss_clean, empty.loss_perturbed, empty.step_cosine, empty.grad_share))
    assert math.isnan(empty.rise)
    assert ObjectiveStats(loss_clean=1.0, loss_perturbed=1.5).rise == 0.5  # built with its fields, as a dataclass
    tracker = ObjectiveTracker(["classifier", "discriminator"])
    tracker.set_losses([1.0, 0.5], [1.5, 0.25])
    stats, _ = tracker.result()
    assert stats["classifier"].rise == 0.5 and stats["discriminator"].rise == -0.25


def test_a_repeated_objective_is_numbered_from_two():
    assert unique_names(["classifier", "classifier", "entropy", "classifier"]) == [
        "classifier", "classifier_2", "entropy", "classifier_3"]
    assert ObjectiveTracker(["entropy", "entropy"]).names == ["entropy", "entropy_2"]
