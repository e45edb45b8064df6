"""The perturbation add-on by value: each side's perturber gets its own attacks and defenses, the main
discriminator joins the attack unless ``use_discriminator=False``, a side with weight 0 is skipped (and only
it), class weights reach the source CE defense (and the mixed one only with ``mix_class_weights``), its
statistics, ``needs_target``, and the discriminator's loss on perturbed predictions with ``d_on_perturbed``."""
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

import uda_perturb as up
import uda_perturb.engine  # noqa: F401  (up.engine.build_model)
from uda_perturb.errors import ConfigError
from uda_perturb.losses import upsample
from uda_perturb.methods import build_method
from uda_perturb.methods.perturbation_addon import PerturbationAddon


def setup(addon, seed=0):
    """A tiny AdaptSegNet with the add-on and one step's state, a self-training (mixed) side included."""
    torch.manual_seed(seed)
    cfg = tiny_config("adaptsegnet", "method.options={ndf: 4}")
    method = build_method("adaptsegnet", up.engine.build_model(cfg), [addon], {"ndf": 4})
    xs, ys = torch.randn(2, 3, 32, 48), torch.randint(0, 9, (2, 32, 48))
    state = method.forward_domains({"image": xs, "label": ys}, {"image": torch.randn(2, 3, 32, 48)})
    state.mixed, state.mixed_labels, state.mixed_weights = state.source, ys, torch.ones(2, 32, 48)
    return method, state


def direct(method, state, seed=1, disc=True, **kw):
    """``perturb_and_defend`` on the source side, called directly with the add-on's seed and settings."""
    torch.manual_seed(seed)
    return up.perturb_and_defend(state.source.features, method.segmentor.classifier, labels=state.labels,
                                 domain="source", discriminator=method.discriminators["main"] if disc else None,
                                 discriminator_input=method.discriminator_space, clean_logits=state.source.logits,
                                 eps=0.2, **kw)


def test_the_main_discriminator_joins_the_attack_unless_switched_off():
    for use in (True, False):
        method, state = setup({"name": "perturbation", "eps": 0.2, "use_discriminator": use})
        torch.manual_seed(1)
        losses, _ = method.addons[0](method, state)
        ref = direct(method, state, disc=use)
        torch.testing.assert_close(method.addons[0]._perturbed["source"], ref.perturbed)
        torch.testing.assert_close(losses["def_source"], ref.loss)
    assert PerturbationAddon().use_discriminator and not PerturbationAddon().d_on_perturbed


def test_each_side_gets_its_own_attacks_and_defenses():
    addon = PerturbationAddon(source_attacks=["classifier"], target_attacks=["entropy"],
                              source_defenses=["ce"], target_defenses=["entropy"])
    src, tgt = addon._perturber("source", "softmax"), addon._perturber("target", "softmax")
    assert [t.name for t in src.attack_terms] == ["classifier"] and [t.name for t in tgt.attack_terms] == ["entropy"]
    assert [t.name for t in src.defense_terms] == ["ce"] and [t.name for t in tgt.defense_terms] == ["entropy"]
    assert src.discriminator_input == "softmax" and addon._perturber("source", "entropy") is not src


def test_a_side_with_weight_zero_is_skipped_and_only_it():
    method, state = setup({"name": "perturbation", "lambda_target": 0.0})
    losses, stats = method.addons[0](method, state)
    assert set(losses) == {"def_source", "def_mixed"}
    per_objective = {f"{side}_{obj}_{k}" for side in ("source", "mixed") for obj in ("classifier", "discriminator")
                     for k in ("clean", "rise", "cos", "share")}
    directions = {"source_directions_cos", "mixed_directions_cos"}
    assert set(stats) == {"source_norm", "source_moved", "mixed_norm", "mixed_moved"} | per_objective | directions
    assert not method.addons[0].needs_target and PerturbationAddon(lambda_target=0.1).needs_target


def test_class_weights_reach_the_source_ce_and_the_mixed_one_only_when_the_method_weighs_it():
    method, state = setup({"name": "perturbation", "eps": 0.2, "lambda_target": 0.0})
    w = torch.linspace(0.5, 2.0, 9)
    method.set_class_weights(w)
    torch.manual_seed(1)
    losses, _ = method.addons[0](method, state)
    ref = direct(method, state, class_weights=method.class_weights)
    torch.testing.assert_close(losses["def_source"], ref.loss)
    torch.manual_seed(1)
    direct(method, state)  # the source side's draws, then the mixed side's: unweighted (no mix_class_weights)
    mixed = up.perturb_and_defend(state.mixed.features, method.segmentor.classifier, labels=state.labels,
                                  domain="source", discriminator=method.discriminators["main"],
                                  discriminator_input=method.discriminator_space,
                                  clean_logits=state.mixed.logits, pixel_weights=state.mixed_weights, eps=0.2)
    torch.testing.assert_close(losses["def_mixed"], mixed.loss)


def test_statistics_and_the_attack_gain_when_tracked():
    method, state = setup({"name": "perturbation", "eps": 0.2, "track_attack_loss": True, "lambda_target": 0.0})
    torch.manual_seed(1)
    _, stats = method.addons[0](method, state)
    ref = direct(method, state, track_attack_loss=True)
    assert stats["source_norm"] == ref.stats.mean_norm and stats["source_moved"] == ref.stats.fraction_perturbed
    assert stats["source_attack_gain"] == ref.stats.attack_loss_after - ref.stats.attack_loss_before
    for obj in ("classifier", "discriminator"):  # what each objective did, and how it took part in the step
        part = ref.stats.objectives[obj]
        assert stats[f"source_{obj}_clean"] == part.loss_clean and stats[f"source_{obj}_rise"] == part.rise
        assert stats[f"source_{obj}_cos"] == part.step_cosine and stats[f"source_{obj}_share"] == part.grad_share
    assert stats["source_classifier_rise"] > 0 and stats["source_discriminator_rise"] > 0  # both attacks acted
    assert stats["source_directions_cos"] == ref.stats.direction_cosine["classifier|discriminator"]
    assert stats["source_classifier_share"] + stats["source_discriminator_share"] == pytest.approx(1.0)


def test_the_add_on_and_apoda_use_the_balanced_rule_and_a_recipe_reaches_sum():
    assert PerturbationAddon()._perturber("source", "softmax").combine == "balanced"
    assert PerturbationAddon(combine="sum")._perturber("target", "softmax").combine == "sum"
    cfg = tiny_config("apoda", "method.options={ndf: 4, perturbation: {combine: sum}}")
    method = build_method("apoda", up.engine.build_model(cfg), [], dict(cfg.method.options))
    assert method.addons[0]._perturber("source", "softmax").combine == "sum"
    with pytest.raises(ConfigError, match="did you mean 'method.options.perturbation.combine'"):
        tiny_config("apoda", "method.options={perturbation: {combin: sum}}")


def test_the_progress_line_shows_what_each_objective_did():
    from uda_perturb.engine.trainer import progress_line

    logs = {"g/seg": 1.0, "perturb/source_classifier_rise": 0.1234, "perturb/source_discriminator_rise": 51.2,
            "perturb/source_discriminator_cos": 0.72, "perturb/source_discriminator_share": 0.01}
    line = progress_line(10, 100, logs, 5.0, 10)
    assert line.endswith("  attack rise source/classifier +0.123 source/discriminator +51.2")
    assert "attack rise" not in progress_line(10, 100, {"g/seg": 1.0}, 5.0, 10)


def test_the_discriminator_learns_perturbed_predictions_only_with_d_on_perturbed():
    method, state = setup({"name": "perturbation", "d_on_perturbed": True})
    addon = method.addons[0]
    assert addon.discriminator_losses(method, state) == {}  # before any step: nothing perturbed yet
    addon(method, state)
    disc = method.discriminators["main"]
    views = [method.discriminator_view(addon._perturbed[d], upsample(addon._adv_logits[d], size))
             for d, size in (("source", state.source_size), ("target", state.target_size))]
    s, t = disc(views[0]), disc(views[1])
    expected = (0.5 * F.binary_cross_entropy_with_logits(s, torch.zeros_like(s))
                + 0.5 * F.binary_cross_entropy_with_logits(t, torch.ones_like(t)))
    torch.testing.assert_close(addon.discriminator_losses(method, state)["d_perturbed"], expected)
    off, off_state = setup({"name": "perturbation"})
    off.addons[0](off, off_state)
    assert off.addons[0].discriminator_losses(off, off_state) == {}


def test_the_mixed_ce_is_class_weighted_when_the_method_weighs_its_mixed_loss():
    torch.manual_seed(0)
    seg = up.build_segmentor("conv1x1", backbone="lite", num_classes=3, backbone_kwargs={"width": 8})
    method = build_method("dacs", seg, [{"name": "perturbation", "eps": 0.2, "lambda_target": 0.0}],
                          {"mix_class_weights": True})
    method.set_class_weights(torch.tensor([0.5, 1.0, 2.0]))
    xs, ys = torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))
    state = method.forward_domains({"image": xs, "label": ys}, {"image": torch.randn(2, 3, 16, 16)})
    torch.manual_seed(1)
    losses, _ = method.addons[0](method, state)
    f, w = method.segmentor.classifier, method.class_weights
    torch.manual_seed(1)
    up.perturb_and_defend(state.source.features, f, labels=ys, domain="source", eps=0.2,
                          discriminator_input=method.discriminator_space, clean_logits=state.source.logits,
                          class_weights=w)
    mixed = up.perturb_and_defend(state.mixed.features, f, labels=state.mixed_labels, domain="source", eps=0.2,
                                  discriminator_input=method.discriminator_space, clean_logits=state.mixed.logits,
                                  class_weights=w, pixel_weights=state.mixed_weights)
    torch.testing.assert_close(losses["def_mixed"], mixed.loss)


def test_levels_are_distinct_known_names_refused_in_full_otherwise():
    import re

    PerturbationAddon(levels=["aux", "main"])
    for bad in ([], ["mian"], ["main", "main"], ["main", "aux", "extra"]):
        msg = f"perturbation levels must be distinct names of ('main', 'aux'), got {bad}"
        with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
            PerturbationAddon(levels=bad)


def test_the_aux_level_needs_an_aux_head_said_in_full():
    seg = up.build_segmentor("conv1x1", backbone="lite", num_classes=3, backbone_kwargs={"width": 8})
    method = build_method("source_only", seg, [{"name": "perturbation", "levels": ["aux"]}])
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"^perturbation levels include 'aux' but the segmentor has no aux head "
                                         r"\(model\.multi_level: true\)$"):
        method.training_step({"image": x, "label": torch.randint(0, 3, (2, 16, 16))}, {"image": x})
