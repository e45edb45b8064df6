"""The first attack step from the caller's own forward graph: on a head without BatchNorm or dropout (the paper's
DeepLab-v2 classifier) it is taken automatically and gives f* bit for bit as the attack's own forward would,
with one head forward fewer; the caller's graph survives for its backward; a head with BatchNorm keeps the
attack's own forward unless asked; logits not computed from the features fall back."""
import pytest
import torch
from helpers import raises_exactly
from torch import nn

import uda_perturb as up
from uda_perturb.models.heads import ASPPv2

K = 5


def counted(head):
    calls = []
    head.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls


def setup(head):
    torch.manual_seed(0)
    trunk = nn.Conv2d(3, 16, 3, padding=1)
    x, y = torch.randn(2, 3, 33, 35), torch.randint(0, K, (2, 33, 35))
    D = up.build_discriminator("fc", in_channels=K, ndf=8)
    return trunk, head, x, y, D


@pytest.mark.parametrize("combine", ["balanced", "sum", "separate"])
@pytest.mark.parametrize("domain", ["source", "target"])
def test_on_the_papers_head_the_first_step_comes_from_the_callers_graph_bit_for_bit(combine, domain):
    trunk, head, x, y, D = setup(ASPPv2(16, K, dilations=(1, 2), branches=2))
    kw = dict(labels=y) if domain == "source" else dict(domain="target", output_size=(33, 35))
    results, grads = {}, {}
    for mode in ("own", "auto"):
        for p in [*trunk.parameters(), *head.parameters()]:
            p.grad = None
        calls = counted(head)
        f = trunk(x)
        z = head(f)
        out = up.perturb_and_defend(f, head, discriminator=D, clean_logits=z, combine=combine, first_step=mode,
                                    channels_last=None, **kw)
        results[mode] = (out, len(calls))
        (z.mean() + out.loss).backward()  # the caller's backward through its own graph, after the attack's
        grads[mode] = [p.grad.clone() for p in [*trunk.parameters(), *head.parameters()]]
        head._forward_hooks.clear()
    (own, n_own), (auto, n_auto) = results["own"], results["auto"]
    assert torch.equal(own.perturbed, auto.perturbed) and torch.equal(own.loss, auto.loss)
    assert all(torch.equal(a, b) for a, b in zip(grads["own"], grads["auto"]))
    defense_passes = 2 if combine == "separate" else 1
    assert (n_own, n_auto) == (1 + 1 + defense_passes, 1 + defense_passes)  # the caller's, the attack's, the defense's


def test_a_head_with_batchnorm_keeps_its_own_forward_unless_asked_and_disconnected_logits_fall_back():
    head = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, K, 1))
    trunk, head, x, y, D = setup(head)
    forwards = {}
    for mode in ("auto", "caller", "own"):
        calls = counted(head)
        f = trunk(x)
        up.perturb_and_defend(f, head, labels=y, clean_logits=head(f), first_step=mode)
        forwards[mode] = len(calls)
        head._forward_hooks.clear()
    assert forwards == {"auto": 3, "caller": 2, "own": 3}
    # logits of other features (a detached copy): the graph does not reach these features, so the attack forwards
    calls = counted(head)
    f = trunk(x)
    up.perturb_and_defend(f, head, labels=y, clean_logits=head(f.detach().clone().requires_grad_()),
                          first_step="caller")
    assert len(calls) == 3
    with pytest.raises(ValueError, match=r"first_step must be one of \('auto', 'caller', 'own'\), got 'mine'"):
        up.Perturber(first_step="mine")


def test_the_discriminator_objective_reuses_the_callers_d_output_bit_for_bit_with_one_d_forward_fewer():
    trunk, head, x, y, D = setup(ASPPv2(16, K, dilations=(1, 2), branches=2))
    results, grads, forwards = {}, {}, {}
    for reuse in (False, True):
        for p in [*trunk.parameters(), *head.parameters()]:
            p.grad = None
        calls = counted(D)
        f = trunk(x)
        z = head(f)
        d_out = D(torch.nn.functional.interpolate(z, size=(33, 35), mode="bilinear", align_corners=True).softmax(1))
        out = up.perturb_and_defend(f, head, domain="target", output_size=(33, 35), discriminator=D, clean_logits=z,
                                    channels_last=None, objective_stats=False,
                                    clean_discriminator_output=d_out if reuse else None)
        forwards[reuse] = len(calls)
        (z.mean() + 0.1 * d_out.mean() + out.loss).backward()  # the caller's graph, D's part included, survives
        results[reuse] = out
        grads[reuse] = [p.grad.clone() for p in [*trunk.parameters(), *head.parameters()]]
        D._forward_hooks.clear()
    assert forwards == {False: 2, True: 1}  # the caller's D forward, and the attack's own only without reuse
    assert torch.equal(results[False].perturbed, results[True].perturbed)
    assert torch.equal(results[False].loss, results[True].loss)
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))


def test_a_discriminator_output_that_is_not_on_the_clean_logits_is_refused():
    trunk, head, x, y, D = setup(ASPPv2(16, K, dilations=(1, 2), branches=2))
    f = trunk(x)
    z = head(f)
    other = D(torch.randn(2, K, 33, 35, requires_grad=True).softmax(1))
    kw = dict(domain="target", output_size=(33, 35), discriminator=D)
    not_d = ("clean_discriminator_output must be D's output on the maps built from clean_logits, with its graph "
             "(computed with autograd on, from those logits)")
    for bad in (other, [0.5], D(z.detach().softmax(1))):  # another input's, not a tensor, no graph to the logits
        with raises_exactly(ValueError, not_d):
            up.perturb_and_defend(f, head, clean_logits=z, clean_discriminator_output=bad, **kw)
    with raises_exactly(ValueError, "clean_discriminator_output needs discriminator= and clean_logits= (it is D's "
                                    "output on the maps built from the clean logits)"):
        up.perturb_and_defend(f, head, clean_discriminator_output=D(z.softmax(1)), **kw)


def test_a_discriminator_with_batchnorm_lends_its_output_only_when_asked():
    trunk, head, x, y, _ = setup(ASPPv2(16, K, dilations=(1, 2), branches=2))
    D = nn.Sequential(nn.Conv2d(K, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
                      nn.Conv2d(8, 1, 3, padding=1))
    forwards = {}
    for mode in ("auto", "caller"):
        calls = counted(D)
        f = trunk(x)
        z = head(f)
        d_out = D(torch.nn.functional.interpolate(z, size=(33, 35), mode="bilinear", align_corners=True).softmax(1))
        up.perturb_and_defend(f, head, domain="target", output_size=(33, 35), discriminator=D, clean_logits=z,
                              first_step=mode, objective_stats=False, clean_discriminator_output=d_out)
        forwards[mode] = len(calls)
        D._forward_hooks.clear()
    # train-mode BatchNorm in the caller's D forward, running statistics in the attack's: its own unless asked
    assert forwards == {"auto": 2, "caller": 1}


def test_logits_without_a_graph_to_the_features_fall_back_and_leaf_features_are_found():
    trunk, head, x, y, D = setup(ASPPv2(16, K, dilations=(1, 2), branches=2))
    f = trunk(x)
    leaf = torch.randn(2, 16, 33, 35, requires_grad=True)  # features without a grad_fn (a leaf of the graph)
    other = torch.randn(2, 16, 33, 35, requires_grad=True)
    with torch.no_grad():
        no_graph = head(f)
    cases = [(f, no_graph, 2), (f, torch.randn(2, K, 33, 35, requires_grad=True), 2),  # not from the features
             (leaf, lambda: head(leaf), 1), (leaf, lambda: head(other), 2)]  # a leaf found; another leaf not
    for features, logits, attack_forwards in cases:
        calls = counted(head)
        z = logits() if callable(logits) else logits
        calls.clear()
        out = up.perturb_and_defend(features, head, labels=y, clean_logits=z, objective_stats=False)
        assert len(calls) == attack_forwards  # (the attack's own forward) and the defense pass
        out.loss.backward()
        head._forward_hooks.clear()


def test_apodas_step_takes_the_target_attacks_d_output_from_its_adversarial_loss():
    from uda_perturb.methods import build_method

    g = torch.Generator().manual_seed(3)
    source = {"image": torch.randn(2, 3, 32, 48, generator=g), "label": torch.randint(0, 4, (2, 32, 48), generator=g)}
    target = {"image": torch.randn(2, 3, 32, 48, generator=g)}
    runs = {}
    for mode in ("own", "auto"):
        torch.manual_seed(0)
        seg = up.build_segmentor("aspp_v2", backbone="lite", num_classes=4, backbone_kwargs={"width": 8})
        method = build_method("apoda", seg, [], {"ndf": 8, "perturbation": {"first_step": mode, "channels_last": None}})
        method.record_stats = False
        calls = counted(method.discriminators["main"])
        result = method.training_step(source, target)
        runs[mode] = (len(calls), result.generator_losses, [p.grad for p in seg.parameters()])
    (n_own, losses_own, grads_own), (n_auto, losses_auto, grads_auto) = runs["own"], runs["auto"]
    # G's adversarial loss, the attack on source, (own only: the attack on target), D's loss on both domains
    assert (n_own, n_auto) == (1 + 1 + 1 + 2, 1 + 1 + 2)
    assert losses_own == losses_auto
    assert all(torch.equal(a, b) for a, b in zip(grads_own, grads_auto) if a is not None)


def test_clean_logits_at_pixel_size_are_not_taken_for_the_heads_output():
    trunk, head, x, y, D = setup(ASPPv2(16, K, dilations=(1, 2), branches=2))
    calls = counted(head)
    f = trunk(x)
    z = torch.nn.functional.interpolate(head(f), size=(66, 70), mode="bilinear", align_corners=False)  # the caller's
    up.perturb_and_defend(f, head, labels=torch.randint(0, K, (2, 66, 70)), clean_logits=z, objective_stats=False)
    assert len(calls) == 3  # the caller's, the attack's own at feature size, the defense pass
