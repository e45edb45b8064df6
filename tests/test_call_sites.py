"""Rules tested where a user meets them: in a method's training step, not only in the helper that implements them.
DACS's pseudo-label weights as the step uses them (the rows it ignores), the classes its ClassMix draws may take
(from the batch, or the image's own), the capture's hand-over between a source and a target forward, and the
perturbation add-on inside every method that takes it."""
import pytest
import torch
from torch import nn

import uda_perturb as up
from uda_perturb.losses import pixel_weighted_ce
from uda_perturb.methods import build_method
from uda_perturb.registry import METHODS


def dacs(**options):
    torch.manual_seed(0)
    seg = up.build_segmentor("conv1x1", backbone="lite", num_classes=4, backbone_kwargs={"width": 8})
    method = build_method("dacs", seg, [], {"pseudo_threshold": 0.0, **options})
    method.input_normalization = "imagenet"
    return method


def batches(labels):
    g = torch.Generator().manual_seed(1)
    b, h, w = labels.shape
    source = {"image": torch.randn(b, 3, h, w, generator=g), "label": labels}
    return source, {"image": torch.randn(b, 3, h, w, generator=g)}


def test_the_dacs_step_trains_on_pseudo_weights_zero_in_the_ignored_rows_and_one_under_the_source_mask():
    method = dacs(psweight_ignore_top=2, psweight_ignore_bottom=3)
    source, target = batches(torch.randint(0, 4, (2, 12, 10)))
    state = method.forward_domains(source, target)
    w, mixed_w, labels = state.pseudo_weights, state.mixed_weights, state.mixed_labels
    assert torch.all(w[:, :2] == 0) and torch.all(w[:, -3:] == 0) and torch.all(w[:, 2:-3] > 0)
    from_source = mixed_w == 1  # ClassMix: 1 under the mask, the pseudo-weight elsewhere
    for rows in (slice(0, 2), slice(-3, None)):
        assert torch.all(mixed_w[:, rows][~from_source[:, rows]] == 0)
        assert torch.equal(labels[:, rows][from_source[:, rows]], source["label"][:, rows][from_source[:, rows]])
    # the loss the step trains on is the pixel-weighted CE with exactly these weights
    expected = pixel_weighted_ce(state.mixed.logits, state.mixed_labels, state.mixed_weights)
    torch.testing.assert_close(method.generator_losses(state)["mix"], expected)


@pytest.mark.parametrize("pool", ["batch", "image"])
def test_each_classmix_draw_takes_half_the_classes_of_its_pool(pool, monkeypatch):
    import uda_perturb.methods.dacs as dacs_module

    masks = []
    original = dacs_module.class_mix

    def spy(xs, ys, xt, yt, wt, m):
        masks.append(m.clone())
        return original(xs, ys, xt, yt, wt, m)

    monkeypatch.setattr(dacs_module, "class_mix", spy)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, :, 4:] = 1  # image 0 holds classes {0, 1}, image 1 classes {2, 3}
    labels[1] = 2
    labels[1, :, 4:] = 3
    method = dacs(class_mix_classes=pool)
    source, target = batches(labels)
    torch.manual_seed(3)
    for _ in range(12):
        method.forward_domains(source, target)
    taken = [len(set(labels[i][m[i].bool()].tolist())) for m in masks for i in range(2)]
    if pool == "image":  # one of its own two classes, every time
        assert set(taken) == {1}
    else:  # two of the batch's four classes: an image gets none, one or both of its own
        assert set(taken) == {0, 1, 2}


class TwoLevel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer3, self.layer4 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.layer5, self.layer6 = nn.Conv2d(4, 3, 1), nn.Conv2d(6, 3, 1)

    def forward(self, x):
        f3 = self.layer3(x)
        return self.layer5(f3), self.layer6(self.layer4(f3))


def test_capture_hands_each_forward_over_with_take_and_keeps_only_the_latest_without():
    model = TwoLevel()
    x_s, x_t = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    with up.capture_features(model, main="layer4", aux="layer3") as cap:
        model(x_s)
        f_s = cap.take()
        model(x_t)
        f_t = cap.take()
        torch.testing.assert_close(f_s["aux"], model.layer3(x_s))
        torch.testing.assert_close(f_s["main"], model.layer4(model.layer3(x_s)))
        torch.testing.assert_close(f_t["main"], model.layer4(model.layer3(x_t)))
        # without take(): the trap the README names, the source features are gone after the target forward
        model(x_s)
        model(x_t)
        torch.testing.assert_close(cap["main"], f_t["main"])
        assert f_s["main"].grad_fn is not None  # handed over attached to the graph, as the defense needs


ADVERSARIAL = {"adaptsegnet", "advent", "apoda"}


@pytest.mark.parametrize("name", sorted(set(METHODS.list()) - {"apoda"}))
def test_the_perturbation_add_on_inside_every_method_defends_with_the_methods_own_features(name):
    torch.manual_seed(0)
    seg = up.build_segmentor("conv1x1", backbone="lite", num_classes=4, backbone_kwargs={"width": 8})
    options = {"ndf": 4} if name in ADVERSARIAL else {}
    method = build_method(name, seg, ["perturbation"], options)
    method.input_normalization = "imagenet"
    source, target = batches(torch.randint(0, 4, (2, 32, 32)))
    result = method.training_step(source, target)
    losses = result.generator_losses
    # self-training defends its source and mixed batches (labelled like source); the others source and target
    sides = {"def_source", "def_mixed"} if name == "dacs" else {"def_source", "def_target"}
    assert {k for k in losses if k.startswith("def_")} == sides and all(losses[k] > 0 for k in sides)
    stats = result.perturbation
    attacks = {"classifier", "discriminator"} if name in ADVERSARIAL else {"classifier"}
    assert {k.split("_")[1] for k in stats if k.startswith("source_") and k.endswith("_rise")} == attacks
    assert seg.head.conv.weight.grad is not None


def test_the_add_on_measures_its_attacks_only_on_steps_the_trainer_logs_and_trains_the_same_either_way(tmp_path):
    import json

    from helpers import tiny_config

    from uda_perturb.engine import Trainer

    runs = {}
    for every in (1, 2):
        cfg = tiny_config("apoda", "method.options={ndf: 4}", "train.iters=3", f"train.log_every={every}")
        trainer = Trainer(cfg, tmp_path / f"every{every}", progress=False)
        trainer.fit()
        records = [json.loads(line) for line in (tmp_path / f"every{every}" / "metrics.jsonl").read_text().split("\n")
                   if line]
        runs[every] = ({r["iteration"]: r for r in records if "g/seg" in r},
                       {k: v.clone() for k, v in trainer.method.segmentor.state_dict().items()})
    logged, weights = runs[2]
    assert sorted(logged) == [2, 3] and all("perturb/source_discriminator_rise" in r for r in logged.values())
    every_step, weights_1 = runs[1]
    assert logged[2]["perturb/source_discriminator_rise"] == every_step[2]["perturb/source_discriminator_rise"]
    assert all(torch.equal(weights[k], weights_1[k]) for k in weights)  # skipping statistics changes no result


def test_capture_errors_in_full():
    from helpers import raises_exactly

    model = TwoLevel()
    with raises_exactly(ValueError, "capture_features needs at least one module: main=..., aux=..."):
        up.capture_features(model)
    with raises_exactly(ValueError, "capture_features: the model has no module 'backbone'"):  # nothing close
        up.capture_features(model, main="backbone")
    cap = up.capture_features(model, main="layer4")
    with pytest.raises(KeyError) as info:
        cap["main"]
    assert info.value.args[0] == "nothing captured as 'main' yet: run the model forward first (captured so far: [])"
    cap.remove()

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    wrapped = nn.Sequential(Pair())
    with up.capture_features(wrapped, main="0"):
        with raises_exactly(TypeError, "capture_features: the module captured as 'main' returned tuple, not a feature "
                                       "tensor; capture a module that outputs one"):
            wrapped(torch.zeros(1, 2, 3, 3))


def test_an_objective_that_does_not_depend_on_the_features_leaves_the_step_to_the_others():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.value = nn.Parameter(torch.ones(()))

        def forward(self, ctx, features, logits):
            return self.value * 2.0  # no path from the features

    torch.manual_seed(0)
    head = nn.Conv2d(6, 4, 1)
    f, y = torch.randn(2, 6, 5, 5), torch.randint(0, 4, (2, 5, 5))
    alone, _, _ = up.Perturber(["classifier"], eps=0.3).perturb(f, head, labels=y)
    both, stats, _ = up.Perturber(["classifier", Constant()], eps=0.3).perturb(f, head, labels=y)
    torch.testing.assert_close(both, alone)  # its direction is zero: the classifier's alone decides
    assert stats.objectives["Constant"].grad_share == 0.0


class _Counting(torch.utils.data.Dataset):
    """One item whose label holds ``pixels`` pixels of class ``cls``; counts how often it is drawn."""

    def __init__(self, pixels, cls=0):
        self.pixels, self.cls, self.draws = pixels, cls, 0

    def __len__(self):
        return 1

    def __getitem__(self, i):
        self.draws += 1
        label = torch.full((10, 10), 9, dtype=torch.long)
        label.view(-1)[:self.pixels] = self.cls
        return {"image": torch.zeros(1), "label": label}


@pytest.mark.parametrize("pixels,draws", [(5, 11), (6, 1)])
def test_a_rare_class_item_is_redrawn_ten_times_at_most_while_it_holds_no_more_than_the_limit(pixels, draws):
    from uda_perturb.engine.loaders import SeededItems

    data = _Counting(pixels, cls=0)  # class 0 is a class like any other
    SeededItems(data, min_class_pixels=5.0)[(0, 123, 0)]
    assert data.draws == draws  # exactly at the limit is not enough (DAFormer: more than it); 1 + 10 re-draws
    plain = _Counting(0)
    SeededItems(plain, min_class_pixels=5.0)[(0, 123)]  # no sampled class: no re-draw
    assert plain.draws == 1


def test_the_training_stream_shuffles_by_default_and_a_missing_root_names_the_key(tmp_path):
    from uda_perturb.config import DatasetConfig
    from uda_perturb.engine.loaders import InfiniteSampler, build_dataset

    order = [key[0] for key, _ in zip(iter(InfiniteSampler(50, seed=0)), range(50))]
    assert sorted(order) == list(range(50)) and order != list(range(50))
    missing = DatasetConfig(name="camvid", root=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match=r"data\.\*\.root is .*; set it with --set data\.\*\.root=PATH"):
        build_dataset(missing, train=True)


def test_dacs_option_errors_in_full_and_a_single_ignored_bottom_row():
    from helpers import raises_exactly

    from uda_perturb.color_jitter import JITTER_OPERATORS
    from uda_perturb.methods.dacs import pseudo_labels
    from uda_perturb.mixing import MIX_CLASSES, class_mix_masks, strong_augment

    with raises_exactly(ValueError, f"dacs color_jitter_operator must be one of {JITTER_OPERATORS}, got 'pil'"):
        dacs(color_jitter_operator="pil")
    with raises_exactly(ValueError, f"dacs class_mix_classes must be one of {MIX_CLASSES}, got 'all'"):
        dacs(class_mix_classes="all")
    for top, bottom in ((-1, 0), (0, -1)):
        with raises_exactly(ValueError, "dacs psweight_ignore_top and psweight_ignore_bottom must be >= 0"):
            dacs(psweight_ignore_top=top, psweight_ignore_bottom=bottom)
    with raises_exactly(ValueError, f"class mix classes must be one of {MIX_CLASSES}, got 'all'"):
        class_mix_masks(torch.zeros(1, 2, 2, dtype=torch.long), "all")
    with raises_exactly(ValueError, f"colour jitter operator must be one of {JITTER_OPERATORS}, got 'pil'"):
        strong_augment(torch.zeros(1, 3, 4, 4), "imagenet", jitter_operator="pil")
    _, w = pseudo_labels(torch.zeros(1, 2, 4, 3), 0.0, ignore_bottom=1)
    assert torch.all(w[:, -1] == 0) and torch.all(w[:, :-1] == 1)


def test_the_add_on_skips_statistics_on_unlogged_steps_and_keeps_a_users_objective_stats_setting():
    torch.manual_seed(0)
    seg = up.build_segmentor("conv1x1", backbone="lite", num_classes=4, backbone_kwargs={"width": 8})
    method = build_method("adaptsegnet", seg, [{"name": "perturbation", "combine": "sum", "objective_stats": True}],
                          {"ndf": 4})
    method.input_normalization = "imagenet"
    source, target = batches(torch.randint(0, 4, (2, 32, 32)))
    logged = method.training_step(source, target).perturbation
    assert "source_discriminator_cos" in logged  # the user's objective_stats: True, cosines under sum too
    method.record_stats = False
    quiet = method.training_step(source, target).perturbation
    assert not any(k.endswith(("_rise", "_clean", "_cos", "_share")) for k in quiet)
    assert {"source_norm", "target_norm"} <= set(quiet)


def test_the_training_streams_are_pinned_value_for_value():
    """A run's stream is part of its identity: a run resumed after an upgrade, or a benchmark reusing a run folder
    by fingerprint, must see the very items, crops and classes it saw before. The values below were recorded on
    2026-12-06; a change of any seed hash shows here (a seed past 2**63 / 1_000_003 exercises the modulus)."""
    import numpy as np

    from uda_perturb.data.rare_class_sampling import RareClassSampler
    from uda_perturb.engine.loaders import InfiniteSampler, redraw_seed

    seed, base = 10**13, 776657963145224197
    plain = [key for key, _ in zip(iter(InfiniteSampler(7, seed=seed, start=2, rank=1, world_size=2)), range(9))]
    assert plain == list(zip([2, 1, 2, 6, 0, 3, 1, 6, 3], range(base, base + 18, 2)))
    assert (redraw_seed(seed, 2), redraw_seed(7, 10)) == (455013188319182173, 7045714562912055224)
    counts = np.array([[100, 60, 70], [100, 80, 10], [100, 90, 95]])
    rare = RareClassSampler(counts, seed=seed, start=3, rank=1, world_size=2, temperature=0.5, min_pixels=50)
    drawn = [key for key, _ in zip(iter(rare), range(6))]
    assert drawn == [(i, base + 2 + 2 * k, c) for k, (i, c) in enumerate([(1, 0), (2, 1), (2, 2), (0, 0), (2, 2),
                                                                          (2, 1)])]


def test_a_fractional_crop_limit_still_redraws_and_a_missing_root_is_named_in_full(tmp_path):
    from uda_perturb.config import DatasetConfig
    from uda_perturb.engine.loaders import SeededItems, build_dataset

    data = _Counting(0, cls=0)
    SeededItems(data, min_class_pixels=0.5)[(0, 7, 0)]  # a scaled-down limit below one pixel
    assert data.draws == 11
    for root, tail in ((tmp_path / "none", " and does not exist"), (tmp_path, "")):
        with pytest.raises(FileNotFoundError) as info:
            build_dataset(DatasetConfig(name="camvid", root=str(root)), train=True, key="data.source")
        assert str(info.value) == (f"camvid: split list not found: {root / 'train.txt'} (data.source.root is "
                                   f"{str(root)!r}, which resolves to {root.resolve()} from the current folder{tail}; "
                                   "set it with --set data.source.root=PATH)")


def test_a_seed_of_any_size_draws_a_stream():
    from uda_perturb.engine.loaders import InfiniteSampler

    keys = [key for key, _ in zip(iter(InfiniteSampler(5, seed=2**62 + 1)), range(10))]  # overflowed before
    assert sorted(k[0] for k in keys[:5]) == list(range(5))
