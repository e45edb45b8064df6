"""The defense in someone else's loop: a reference-style model built here (returns ``(aux, main)`` logits, heads
with BatchNorm and dropout, its own discriminators), features taken with ``capture_features``, perturb_and_defend
at both levels and both domains for a few steps; and every error a user met, by its text."""
import pytest
import torch
import torch.nn.functional as F
from helpers import raises_exactly
from torch import nn

import uda_perturb as up
from uda_perturb.bench.own_loop import bce

K = 5


class Head(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.conv, self.bn, self.drop, self.out = nn.Conv2d(cin, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5), \
            nn.Conv2d(8, K, 1)

    def forward(self, x):
        return self.out(self.drop(F.relu(self.bn(self.conv(x)))))


class RefModel(nn.Module):
    """A two-level model as the references write them: ``forward`` returns ``(aux, main)`` logits."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.layer5, self.layer6 = Head(8), Head(12)

    def forward(self, x):
        f3 = self.layer3(self.stem(x))
        return self.layer5(f3), self.layer6(self.layer4(f3))


def disc():
    return nn.Sequential(nn.Conv2d(K, 4, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 4, 2, 1))


def setup(seed=0):
    torch.manual_seed(seed)
    model, discs = RefModel().train(), [disc(), disc()]
    xs, xt = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    ys = torch.randint(0, K, (2, 32, 32))
    return model, discs, xs, ys, xt


def defense_losses(model, discs, feats_s, feats_t, logits_s, logits_t, ys, mode):
    """The defense of both levels and both domains, each level with its own head and D."""
    total = 0
    for i, (key, head) in enumerate((("aux", model.layer5), ("main", model.layer6))):
        out_s = up.perturb_and_defend(feats_s[key], head, labels=ys, discriminator=discs[i],
                                      clean_logits=logits_s[i], defense_bn_mode=mode)
        out_t = up.perturb_and_defend(feats_t[key], head, domain="target", discriminator=discs[i],
                                      output_size=(32, 32), clean_logits=logits_t[i], defense_bn_mode=mode)
        total = total + out_s.loss + 0.1 * out_t.loss
    return total


def test_a_few_steps_of_a_reference_loop_with_the_defense_at_both_levels_and_domains():
    model, discs, xs, ys, xt = setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    heads = {n for n, _ in model.named_parameters() if n.startswith(("layer5", "layer6"))}
    with up.capture_features(model, main="layer4", aux="layer3") as cap:
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            logits_s = model(xs)
            feats_s = cap.take()  # before the target forward replaces them
            logits_t = model(xt)
            feats_t = cap.take()
            assert feats_s["main"].shape == (2, 12, 8, 8) and not torch.equal(feats_s["main"], feats_t["main"])
            buffers = {n: b.clone() for n, b in model.named_buffers() if n.startswith(("layer5", "layer6"))}
            d_before = [p.clone() for d in discs for p in d.parameters()]
            loss = defense_losses(model, discs, feats_s, feats_t, logits_s, logits_t, ys, "eval")
            loss.backward()
            # the defense trains the heads only (f* is detached), leaves D and the heads' BN statistics alone
            grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
            assert grads == heads
            assert all(p.grad is None for d in discs for p in d.parameters())
            assert all(torch.equal(p, q) for p, q in zip((p for d in discs for p in d.parameters()), d_before))
            assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers() if n in buffers)
            seg = sum(F.cross_entropy(F.interpolate(z, size=(32, 32), mode="bilinear", align_corners=True), ys)
                      for z in logits_s)
            seg.backward()
            opt.step()
    assert not model.layer6.bn.running_mean.eq(0).all()  # the clean forward did update them
    assert model.training and all(m.training for m in model.modules())  # modes restored


def test_in_train_mode_the_defense_pass_moves_the_heads_batchnorm_statistics():
    model, discs, xs, ys, xt = setup(1)
    with up.capture_features(model, main="layer4", aux="layer3") as cap:
        logits_s, feats_s = model(xs), cap.take()
        logits_t, feats_t = model(xt), cap.take()
    before = model.layer6.bn.running_mean.clone()
    defense_losses(model, discs, feats_s, feats_t, logits_s, logits_t, ys, "train")
    assert not torch.equal(model.layer6.bn.running_mean, before)
    before = model.layer6.bn.running_mean.clone()
    torch.manual_seed(3)
    a = defense_losses(model, discs, feats_s, feats_t, logits_s, logits_t, ys, "eval")
    torch.manual_seed(4)  # other dropout draws would change a train-mode defense; eval mode has none
    b = defense_losses(model, discs, feats_s, feats_t, logits_s, logits_t, ys, "eval")
    assert torch.equal(model.layer6.bn.running_mean, before) and torch.equal(a, b)


def test_capture_features_keeps_each_forward_apart_and_names_bad_modules():
    model = RefModel()
    cap = up.capture_features(model, main=model.layer4, aux="layer3")
    with raises_exactly(RuntimeError, "capture_features: nothing captured since the last take(); run the model "
                                      "forward first"):
        cap.take()
    model(torch.randn(1, 3, 16, 16))
    first = cap.take()
    model(torch.randn(1, 3, 16, 16))
    assert not torch.equal(first["main"], cap["main"])
    cap.remove()
    model(torch.randn(1, 3, 16, 16))
    with pytest.raises(KeyError, match="nothing captured as 'main' yet"):
        cap["main"]
    with raises_exactly(ValueError, "capture_features: the model has no module 'layr4' (did you mean 'layer4'?)"):
        up.capture_features(model, main="layr4")
    with raises_exactly(ValueError, "capture_features: the module given as main= is not part of the model"):
        up.capture_features(model, main=nn.Conv2d(1, 1, 1))


def errors_setup():
    model, discs, xs, ys, xt = setup(2)
    f = model.layer4(model.layer3(model.stem(xs)))
    return model, discs[1], f, ys


def test_each_error_a_user_met_is_one_line_naming_the_fix():
    model, d, f, ys = errors_setup()
    head = model.layer6
    with raises_exactly(TypeError, "perturb_and_defend() got an unexpected keyword argument 'discrimnator' (did you "
                                   "mean 'discriminator'?)"):
        up.perturb_and_defend(f, head, labels=ys, discrimnator=d)
    with raises_exactly(ValueError, "defense 'ce' needs labels and none were given: for unlabelled target features "
                                    "pass domain='target' (its default defense is 'kl'); for source features pass "
                                    "labels=..."):
        up.perturb_and_defend(f, head)
    with raises_exactly(TypeError, "the classifier returned a tuple, not a logits tensor: pass a callable from "
                                   "features to one B x K x h x w tensor, e.g. lambda f: classifier(f)[0] or [1]"):
        up.perturb_and_defend(f, lambda x: (head(x), head(x)), labels=ys)
    with raises_exactly(TypeError, "the classifier returned a dict, not a logits tensor: pass a callable from "
                                   "features to one B x K x h x w tensor, e.g. lambda f: classifier(f)['out']"):
        up.perturb_and_defend(f, lambda x: {"out": head(x)}, labels=ys)
    with raises_exactly(ValueError, "a discriminator attack without labels needs output_size=(H, W): the image size "
                                    "the discriminator judges (or clean_logits already at that size, or upsample= your "
                                        "own upsampler); without it D "
                                    "would see feature-resolution maps"):
        up.perturb_and_defend(f, head, domain="target", discriminator=d)
    with raises_exactly(ValueError, "the discriminator's first layer takes 5 channels, but discriminator_input="
                                    "'features' gives it 12; discriminator_input='softmax' (5 channels) or "
                                    "'self_information' (5 channels) fits"):
        up.perturb_and_defend(f, head, labels=ys, discriminator=d, discriminator_input="features")
    with raises_exactly(TypeError, "labels must hold whole class ids; got torch.float32 values such as 1.5"):
        up.perturb_and_defend(f, head, labels=torch.full(ys.shape, 1.5))


def test_float_labels_holding_class_ids_are_taken_as_the_integer_ones():
    model, d, f, ys = errors_setup()
    model.eval()
    torch.manual_seed(0)
    a = up.perturb_and_defend(f, model.layer6, labels=ys.float(), discriminator=d)
    torch.manual_seed(0)
    b = up.perturb_and_defend(f, model.layer6, labels=ys, discriminator=d)
    assert torch.equal(a.perturbed, b.perturbed) and torch.equal(a.loss, b.loss)


def test_discriminator_spaces_self_information_alias_and_callable():
    from uda_perturb.losses import self_information

    model, _, f, ys = errors_setup()
    model.eval()
    d = disc()
    runs = {}
    for space in ("self_information", "entropy", lambda feats, logits: self_information(logits)):
        torch.manual_seed(0)
        runs[str(space)[:8]] = up.perturb_and_defend(f, model.layer6, labels=ys, discriminator=d,
                                                     attacks=["discriminator"], discriminator_input=space).perturbed
    a, b, c = runs.values()
    assert torch.equal(a, b) and torch.equal(a, c)
    logits = torch.randn(2, K, 4, 4)
    assert torch.equal(up.models.discriminators.discriminator_input("self_information", f, logits),
                       self_information(logits))


def test_clean_logits_at_pixel_size_stand_for_output_size_and_align_corners_is_an_option():
    model, d, f, _ = errors_setup()
    model.eval()
    clean = F.interpolate(model.layer6(f), size=(32, 32), mode="bilinear", align_corners=True)
    torch.manual_seed(0)
    a = up.perturb_and_defend(f, model.layer6, domain="target", discriminator=d, clean_logits=clean)
    torch.manual_seed(0)
    b = up.perturb_and_defend(f, model.layer6, domain="target", discriminator=d, output_size=(32, 32))
    torch.testing.assert_close(a.perturbed, b.perturbed)
    torch.manual_seed(0)
    c = up.perturb_and_defend(f, model.layer6, domain="target", discriminator=d, output_size=(32, 32),
                              align_corners=False)
    assert not torch.allclose(b.loss, c.loss)


def test_split_torchvision_exposes_the_aux_classifier():
    import torchvision

    model = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3,
                                                               aux_loss=True).eval()
    split = up.split_torchvision(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)["aux"]
        aux = split.aux_classifier(split.aux_features(x))
        both = split.both_features(x)
    torch.testing.assert_close(F.interpolate(aux, size=(64, 64), mode="bilinear", align_corners=False), ref)
    assert set(both) == {"out", "aux"}
    plain = up.split_torchvision(torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None,
                                                                              num_classes=3))
    assert plain.aux_classifier is None


def test_the_add_on_defends_the_aux_level_when_asked_weighted_like_the_aux_segmentation_loss():
    from helpers import tiny_config

    import uda_perturb.engine  # noqa: F401
    from uda_perturb.methods import build_method

    cfg = tiny_config("adaptsegnet", "model.multi_level=true", "method.options={ndf: 4}")
    torch.manual_seed(0)
    method = build_method("adaptsegnet", up.engine.build_model(cfg),
                          [{"name": "perturbation", "levels": ["main", "aux"]}], {"ndf": 4})
    xs, ys = torch.randn(2, 3, 32, 48), torch.randint(0, 9, (2, 32, 48))
    state = method.forward_domains({"image": xs, "label": ys}, {"image": torch.randn(2, 3, 32, 48)})
    torch.manual_seed(1)
    losses, stats = method.addons[0](method, state)
    assert set(losses) == {"def_source", "def_target", "def_source_aux", "def_target_aux"}
    torch.manual_seed(1)
    method.addons[0].levels = ["main"]
    main_only, _ = method.addons[0](method, state)
    torch.testing.assert_close(main_only["def_source"], losses["def_source"])
    aux = up.perturb_and_defend(state.source.aux_features, method.segmentor.aux_head, labels=ys,
                                discriminator=method.discriminators["aux"], clean_logits=state.source.aux_logits)
    torch.testing.assert_close(losses["def_source_aux"], method.seg_aux_weight * aux.loss)
    assert "source_discriminator_cos_aux" in stats
    tiny_config("adaptsegnet", "model.multi_level=true", "method.addons=[{name: perturbation, levels: [main, aux]}]")
    with pytest.raises(ValueError, match="perturbation levels must be distinct names of"):
        up.methods.perturbation_addon.PerturbationAddon(levels=["main", "main"])


def test_the_reference_step_runs_with_its_own_discriminators():
    """The benchmark's step (AdaptSegNet's, written as its code writes it) runs with and without the defense."""
    from uda_perturb.bench.own_loop import ResDeeplab, fc_discriminator, step

    torch.manual_seed(0)
    model, discs = ResDeeplab(3, 50).train(), [fc_discriminator(3, 8), fc_discriminator(3, 8)]
    x, y = torch.randn(1, 3, 64, 64), torch.randint(0, 3, (1, 64, 64))
    with up.capture_features(model, main="layer4", aux="layer3") as cap:
        for defend in (False, True):
            out = step(model, discs, cap, x, y, x, defend)
            assert out["loss"] > 0 and out["d_loss"] > 0
    assert float(bce(torch.zeros(1), 0.0)) == pytest.approx(0.6931, abs=1e-4)


def test_the_floor_by_hand_is_the_default_defense_loss_and_gradients():
    """The benchmark's floor (the defense's least tensor work written out) computes what the default
    ``perturb_and_defend`` computes in that step: the same total loss and the same gradients of every parameter,
    so its time is a floor of the same work, not of a cheaper one."""
    from uda_perturb.bench.own_loop import ResDeeplab, fc_discriminator, step

    torch.manual_seed(0)
    model, discs = ResDeeplab(3, 50).train(), [fc_discriminator(3, 8), fc_discriminator(3, 8)]
    xs, xt, y = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64), torch.randint(0, 3, (1, 64, 64))
    runs = {}
    with up.capture_features(model, main="layer4", aux="layer3") as cap:
        for defend in (True, "by_hand", False):
            model.zero_grad(set_to_none=True)
            out = step(model, discs, cap, xs, y, xt, defend)
            runs[defend] = (out["loss"], {n: p.grad.clone() for n, p in model.named_parameters()})
    assert runs[True][0] == pytest.approx(runs["by_hand"][0], rel=1e-6)
    assert runs[True][0] != pytest.approx(runs[False][0], rel=1e-3)  # the defense is in the loss
    for name, grad in runs[True][1].items():
        torch.testing.assert_close(runs["by_hand"][1][name], grad, rtol=1e-5, atol=1e-7)
