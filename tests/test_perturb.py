"""Invariants of the pointwise perturbation engine, against formulas written here independently."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import uda_perturb as up
from uda_perturb import Perturber, perturb_and_defend

B, C, K, H, W = 2, 6, 4, 5, 7


def linear_classifier():
    torch.manual_seed(1)
    return nn.Conv2d(C, K, 1)


def manual_ce_grad(conv, f, y):
    """d/df of mean CE over valid pixels for a 1x1 conv: W^T (softmax - onehot) / N_valid."""
    z = torch.einsum("kc,bchw->bkhw", conv.weight[:, :, 0, 0], f) + conv.bias.view(1, -1, 1, 1)
    p = z.softmax(1)
    valid = y != 255
    onehot = F.one_hot(y.clamp(max=K - 1), K).permute(0, 3, 1, 2).float()
    r = (p - onehot) * valid.unsqueeze(1) / valid.sum()
    return torch.einsum("kc,bkhw->bchw", conv.weight[:, :, 0, 0], r)


def pos_norm(x):
    return x.pow(2).sum(1).sqrt()


def test_l2_single_step_norm_equals_eps_and_direction_is_normalised_gradient():
    conv = linear_classifier()
    f = torch.randn(B, C, H, W)
    y = torch.randint(0, K, (B, H, W))
    y[0, 0, :3] = 255  # ignored positions
    eps = 0.3
    fstar, stats, _ = Perturber(["classifier"], eps=eps, eps_mode="absolute").perturb(f, conv, labels=y)
    delta = fstar - f
    g = manual_ce_grad(conv, f, y)
    expected = eps * g / pos_norm(g).unsqueeze(1).clamp_min(1e-30)
    expected[0, :, 0, :3] = 0
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-4)
    n = pos_norm(delta)
    assert torch.all(n[0, 0, :3] == 0), "ignored pixels must not move"
    mask = torch.ones_like(n, dtype=torch.bool)
    mask[0, 0, :3] = False
    torch.testing.assert_close(n[mask], torch.full_like(n[mask], eps), atol=1e-5, rtol=0)
    assert stats.fraction_perturbed == pytest.approx(1 - 3 / (B * H * W))
    assert stats.max_norm == pytest.approx(eps, abs=1e-5)


def test_linf_single_step_is_eps_sign_gradient():
    conv = linear_classifier()
    f = torch.randn(B, C, H, W)
    y = torch.randint(0, K, (B, H, W))
    eps = 0.05
    fstar, _, _ = Perturber(["classifier"], eps=eps, norm="linf", eps_mode="absolute").perturb(f, conv, labels=y)
    expected = eps * manual_ce_grad(conv, f, y).sign()
    torch.testing.assert_close(fstar - f, expected, atol=1e-6, rtol=0)
    assert torch.allclose((fstar - f).abs(), torch.full_like(f, eps), atol=1e-6)


def test_relative_eps_scales_with_feature_norm():
    conv = linear_classifier()
    f = torch.randn(B, C, H, W) * torch.rand(B, 1, H, W) * 5
    y = torch.randint(0, K, (B, H, W))
    fstar, stats, _ = Perturber(["classifier"], eps=0.2, eps_mode="relative").perturb(f, conv, labels=y)
    torch.testing.assert_close(pos_norm(fstar - f), 0.2 * pos_norm(f), atol=1e-5, rtol=1e-4)
    assert stats.mean_relative_norm == pytest.approx(0.2, rel=1e-4)
    # the same relative attack on features scaled by 10 moves them 10 times as far
    f2, _, _ = Perturber(["classifier"], eps=0.2, eps_mode="relative").perturb(10 * f, conv, labels=y)
    torch.testing.assert_close(pos_norm(f2 - 10 * f), 2.0 * pos_norm(f), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_projection_holds_after_several_steps(norm):
    conv = linear_classifier()
    f = torch.randn(B, C, H, W)
    y = torch.randint(0, K, (B, H, W))
    eps = 0.5
    p = Perturber(["classifier", "entropy"], eps=eps, steps=5, alpha=0.3, norm=norm, eps_mode="absolute",
                  random_start=True)
    fstar, _, _ = p.perturb(f, conv, labels=y)
    d = fstar - f
    if norm == "l2":
        assert pos_norm(d).max() <= eps + 1e-5
    else:
        assert d.abs().max() <= eps + 1e-6


class TinyHead(nn.Module):
    """Conv + BN + dropout: a classifier with state an attack must not touch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout2d(0.5)
        self.out = nn.Conv2d(8, K, 1)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.bn(self.conv(x)))))


@pytest.mark.parametrize("bn_mode", ["eval", "batch"])
def test_attack_leaves_model_state_untouched(bn_mode):
    head = TinyHead().train()
    disc = up.build_discriminator("pixel", in_channels=K).train()
    head.drop.eval()  # a caller's mixed modes must come back as they were
    before = {k: v.clone() for k, v in head.state_dict().items()}
    f = torch.randn(B, C, H, W)
    y = torch.randint(0, K, (B, H, W))
    p = Perturber(["classifier", "discriminator", "entropy"], steps=3, bn_mode=bn_mode)
    p.perturb(f, head, labels=y, discriminator=disc)
    for name, param in list(head.named_parameters()) + list(disc.named_parameters()):
        assert param.grad is None, f"attack wrote .grad of {name}"
    for k, v in head.state_dict().items():
        assert torch.equal(v, before[k]), f"attack changed {k}"
    assert head.training and head.bn.training and head.conv.training and not head.drop.training
    assert disc.training


def test_perturb_and_defend_trains_classifier_only_through_perturbed_features():
    head = TinyHead().train()
    f = torch.randn(B, C, H, W, requires_grad=True)
    y = torch.randint(0, K, (B, H, W))
    out = perturb_and_defend(f, head, labels=y, domain="source")
    assert set(out.losses) == {"ce"}
    assert out.perturbed.requires_grad is False
    out.loss.backward()
    assert f.grad is None  # f* is detached: the defense trains F only
    assert head.out.weight.grad is not None and head.out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["classifier", "entropy", "discriminator"])
@pytest.mark.parametrize("domain", ["source", "target"])
def test_each_attack_increases_its_own_loss(name, domain):
    conv = linear_classifier()
    disc = up.build_discriminator("pixel", in_channels=K)
    f = torch.randn(B, C, H, W)
    y = torch.randint(0, K, (B, H, W)) if domain == "source" else None
    p = Perturber([name], eps=0.5, eps_mode="absolute", defenses=["kl"])
    _, stats, _ = p.perturb(f, conv, labels=y, domain=domain, discriminator=disc, measure=True, output_size=(H, W))
    assert stats.attack_loss_after > stats.attack_loss_before


def test_discriminator_attack_moves_source_towards_target_and_target_towards_source():
    torch.manual_seed(3)
    disc = up.build_discriminator("pixel", in_channels=C)
    conv = linear_classifier()
    f = torch.randn(B, C, H, W)
    p = Perturber(["discriminator"], eps=0.5, eps_mode="absolute", discriminator_input="features", defenses=["kl"])
    d0 = torch.sigmoid(disc(f)).mean()  # D(f) = P(target)
    fs, _, _ = p.perturb(f, conv, domain="source", discriminator=disc)
    ft, _, _ = p.perturb(f, conv, domain="target", discriminator=disc)
    assert torch.sigmoid(disc(fs)).mean() > d0 > torch.sigmoid(disc(ft)).mean()


def test_weighted_objectives_combine_gradients():
    conv = linear_classifier()
    f = torch.randn(B, C, H, W)
    y = torch.randint(0, K, (B, H, W))
    p_ce = Perturber({"classifier": 1.0}, eps=1.0, eps_mode="absolute")
    p_both = Perturber({"classifier": 1.0, "entropy": 0.0}, eps=1.0, eps_mode="absolute")
    a, _, _ = p_ce.perturb(f, conv, labels=y)
    b, _, _ = p_both.perturb(f, conv, labels=y)
    torch.testing.assert_close(a, b)


def test_kl_attack_needs_random_start_to_gain():
    # KL(p_clean || p(f)) has zero gradient at f = f_clean (only rounding noise), so without a random
    # start the attack gains nothing; from a random point of the ball it finds a real direction.
    conv = linear_classifier()
    f = torch.randn(B, C, H, W)
    kl = {"name": "classifier", "target_mode": "kl"}
    _, flat, _ = Perturber([kl], eps=0.3, defenses=["kl"]).perturb(f, conv, domain="target", measure=True)
    _, vat, _ = Perturber([kl], eps=0.3, steps=2, random_start=True, defenses=["kl"]).perturb(
        f, conv, domain="target", measure=True)
    assert flat.attack_loss_before == pytest.approx(0.0, abs=1e-7)
    assert vat.fraction_perturbed == 1.0
    assert vat.attack_loss_after > 2 * flat.attack_loss_after


def test_bad_inputs_are_refused_with_clear_errors():
    conv = linear_classifier()
    f = torch.randn(B, C, H, W)
    y = torch.randint(0, K, (B, H, W))
    with pytest.raises(ValueError, match="B x C x h x w"):
        perturb_and_defend(f[0], conv, labels=y)
    with pytest.raises(ValueError, match="labels must be B x H x W"):
        perturb_and_defend(f, conv, labels=y[0])
    bad = y.clone()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"values \[9\] outside \[0, 4\)"):
        perturb_and_defend(f, conv, labels=bad)
    with pytest.raises(ValueError, match="needs a discriminator"):
        perturb_and_defend(f, conv, labels=y, attacks=["discriminator"])
    with pytest.raises(ValueError, match="needs labels"):
        perturb_and_defend(f, conv, domain="target", defenses=["ce"])
    with pytest.raises(ValueError, match="NaN or Inf"):
        perturb_and_defend(f * math.inf, conv, labels=y)
    with pytest.raises(ValueError, match="domain must be"):
        perturb_and_defend(f, conv, labels=y, domain="src")
    with pytest.raises(ValueError, match="norm must be"):
        Perturber(norm="l3")
    with pytest.raises(KeyError, match="Did you mean 'entropy'"):
        Perturber(["entropi"])


def test_upsampled_labels_and_multi_level_model():
    seg = up.build_segmentor("aspp_v2", backbone="lite", num_classes=K, multi_level=True,
                             backbone_kwargs={"width": 8})
    x = torch.randn(B, 3, 32, 40)
    y = torch.randint(0, K, (B, 32, 40))
    f = seg.features(x)
    out = perturb_and_defend(f, seg.classifier, labels=y, eps=0.1)
    assert out.adv_logits.shape == (B, K, 4, 5) and out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_perturbation_under_bf16_autocast_matches_fp32_direction():
    torch.manual_seed(5)
    head = nn.Sequential(nn.Conv2d(C, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, K, 1))
    f = torch.randn(B, C, H, W)
    y = torch.randint(0, K, (B, H, W))
    p = Perturber(["classifier"], eps=0.5, eps_mode="absolute")
    ref, _, _ = p.perturb(f, head, labels=y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp, stats, _ = p.perturb(f.bfloat16(), head, labels=y)
    assert amp.dtype == torch.bfloat16
    d_ref, d_amp = ref - f, amp.float() - f
    cos = F.cosine_similarity(d_ref, d_amp, dim=1)
    assert cos.min() > 0.95 and stats.fraction_perturbed == 1.0
    torch.testing.assert_close(pos_norm(d_amp), torch.full((B, H, W), 0.5), atol=0.02, rtol=0)
