"""Method losses against the formulas of REFERENCE.md, written out here."""
import math

import pytest
import torch
import torch.nn.functional as F

import uda_perturb as up
from uda_perturb.methods import build_method

K = 5


def batches(b=2, h=32, w=40):
    s = {"image": torch.randn(b, 3, h, w), "label": torch.randint(0, K, (b, h, w))}
    t = {"image": torch.randn(b, 3, h, w) * 0.5 + 0.2}
    return s, t


def seg(multi=True):
    torch.manual_seed(0)
    return up.build_segmentor("conv1x1", backbone="lite", num_classes=K, multi_level=multi,
                              backbone_kwargs={"width": 8})


def bce(z, label):
    p = torch.sigmoid(z)
    return -(label * torch.log(p) + (1 - label) * torch.log(1 - p)).mean()


def test_adaptsegnet_losses_match_formulas_and_d_gets_no_generator_grads():
    m = build_method("adaptsegnet", seg(), options={"discriminator": "pixel", "ndf": 4})
    s, t = batches()
    m.eval()  # deterministic BN for recomputation below
    state = m.forward_domains(s, t)
    g = m.generator_losses(state)
    up_s = F.interpolate(state.source.logits, (32, 40), mode="bilinear", align_corners=True)
    up_t = F.interpolate(state.target.logits, (32, 40), mode="bilinear", align_corners=True)
    up_t_aux = F.interpolate(state.target.aux_logits, (32, 40), mode="bilinear", align_corners=True)
    d_main, d_aux = m.discriminators["main"], m.discriminators["aux"]
    assert g["seg"].item() == pytest.approx(F.cross_entropy(up_s, s["label"]).item(), rel=1e-5)
    assert g["adv_main"].item() == pytest.approx(0.001 * bce(d_main(up_t.softmax(1)), 0.0).item(), rel=1e-4)
    assert g["adv_aux"].item() == pytest.approx(0.0002 * bce(d_aux(up_t_aux.softmax(1)), 0.0).item(), rel=1e-4)
    d = m.discriminator_losses(state)
    expected = 0.5 * bce(d_main(up_s.softmax(1)), 0.0) + 0.5 * bce(d_main(up_t.softmax(1)), 1.0)
    assert d["d_main"].item() == pytest.approx(expected.item(), rel=1e-4)
    sum(g.values()).backward()
    assert all(p.grad is None for p in m.discriminators.parameters())
    assert m.segmentor.head.conv.weight.grad is not None


def test_advent_discriminator_sees_weighted_self_information_and_minent_weights():
    m = build_method("advent", seg(multi=False), options={"discriminator": "pixel", "ndf": 4,
                                                          "minent_weights": [0.001]})
    m.eval()
    s, t = batches()
    state = m.forward_domains(s, t)
    g = m.generator_losses(state)
    up_t = F.interpolate(state.target.logits, (32, 40), mode="bilinear", align_corners=True)
    p = up_t.softmax(1)
    info = -p * torch.log(p) / math.log(K)
    assert g["adv_main"].item() == pytest.approx(0.001 * bce(m.discriminators["main"](info), 0.0).item(), rel=1e-4)
    assert g["ent_main"].item() == pytest.approx(0.001 * info.sum(1).mean().item(), rel=1e-4)


def test_minent_has_no_discriminator():
    m = build_method("minent", seg())
    assert len(m.discriminators) == 0
    s, t = batches()
    r = m.training_step(s, t)
    assert set(r.generator_losses) == {"seg", "seg_aux", "ent_main", "ent_aux"} and not r.discriminator_losses


def test_source_only_never_updates_bn_with_target_images():
    s, t = batches()
    _, t2 = batches()
    t2["image"] = t2["image"] * 10 + 3
    stats = []
    for target in (t, t2, None):
        m = build_method("source_only", seg(), [{"name": "perturbation", "eps": 0.1}])
        m.training_step(s, target)
        bn = m.segmentor.backbone.stem[1]
        stats.append((bn.running_mean.clone(), bn.running_var.clone()))
    for a, b in zip(stats, stats[1:]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_apoda_adds_defense_terms_and_addon_stacks_on_advent():
    s, t = batches()
    r = build_method("apoda", seg(), options={"ndf": 4}).training_step(s, t)
    assert {"seg", "adv_main", "def_source", "def_target"} <= set(r.generator_losses)
    assert r.perturbation["source_moved"] == 1.0
    m = build_method("advent", seg(), ["perturbation"], {"ndf": 4})
    r = m.training_step(s, t)
    assert {"def_source", "def_target", "adv_main"} <= set(r.generator_losses)
    assert m.addons[0]._perturbers  # the addon attacked ADVENT's D in its entropy space
    assert all(k[1] == "entropy" for k in m.addons[0]._perturbers)


def test_d_on_perturbed_trains_discriminator_on_perturbed_predictions():
    s, t = batches()
    m = build_method("apoda", seg(), options={"ndf": 4, "perturbation": {"d_on_perturbed": True}})
    r = m.training_step(s, t)
    assert "d_perturbed" in r.discriminator_losses


def test_unknown_method_and_addon_names():
    with pytest.raises(KeyError, match="Did you mean 'advent'"):
        build_method("advnet", seg())
    with pytest.raises(KeyError, match="Did you mean 'perturbation'"):
        build_method("advent", seg(), ["perturbaton"])


def test_source_only_target_bn_stats_control_updates_bn_but_trains_on_source_only():
    s, t = batches()
    plain = build_method("source_only", seg())
    control = build_method("source_only", seg(), options={"target_bn_stats": True})
    r1, r2 = plain.training_step(s, t), control.training_step(s, t)
    assert r1.generator_losses == r2.generator_losses  # same losses: the target adds no loss
    bn1, bn2 = plain.segmentor.backbone.stem[1], control.segmentor.backbone.stem[1]
    assert not torch.equal(bn1.running_mean, bn2.running_mean)  # ...but BatchNorm saw target batches
    g1 = plain.segmentor.head.conv.weight.grad
    g2 = control.segmentor.head.conv.weight.grad
    torch.testing.assert_close(g1, g2)
