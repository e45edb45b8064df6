"""Logits reach pixel size with the network's own convention: ``align_corners=False`` on DAFormer's and SegFormer's
heads (mmseg's ``resize``), ``True`` on DeepLab-v2 (AdaptSegNet, ADVENT, DACS); in every method's losses, the
add-ons', D's input, the teacher's pseudo-labels and the evaluation."""
import pytest
import torch
import torch.nn.functional as F

import uda_perturb as up
from uda_perturb.engine import predict_logits
from uda_perturb.methods import build_method

K = 4  # classes: no other map in these networks has 4 channels, so a 4-channel bilinear resize is a logit's


def _fusion(head="daformer", seed=0):
    torch.manual_seed(seed)
    return up.build_segmentor(head, backbone="mit_b0", num_classes=K)


def _deeplab(seed=0):
    torch.manual_seed(seed)
    return up.build_segmentor("aspp_v2", backbone="lite", num_classes=K, backbone_kwargs={"width": 8})


def _batches(seed=1):
    g = torch.Generator().manual_seed(seed)
    source = {"image": torch.randn(2, 3, 32, 48, generator=g), "label": torch.randint(0, K, (2, 32, 48), generator=g)}
    return source, {"image": torch.randn(2, 3, 32, 48, generator=g)}


def _logit_resizes(monkeypatch):
    """Record ``align_corners`` of every bilinear resize of a K-channel map."""
    seen: list = []
    real = F.interpolate

    def spy(x, *args, **kwargs):
        if x.dim() == 4 and x.shape[1] == K and kwargs.get("mode", "nearest") == "bilinear":
            seen.append(kwargs.get("align_corners"))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    return seen


def test_the_network_declares_its_convention_and_forward_follows_it():
    x = torch.randn(1, 3, 40, 56)
    for seg, expected in ((_fusion().eval(), False), (_fusion("segformer").eval(), False), (_deeplab().eval(), True)):
        assert seg.align_corners is expected
        logits = seg.classify(seg.features(x))
        mine = F.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=expected)
        other = F.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=not expected)
        torch.testing.assert_close(seg(x), mine, rtol=0, atol=0)
        assert (seg(x) - other).abs().max() > 1e-4  # the two conventions differ here, so the check can fail


# (method, add-ons, options): every place a logit is resized, D's input and the defense's included
STEPS = [("source_only", [], {}),
         ("adaptsegnet", [{"name": "perturbation", "d_on_perturbed": True}], {"ndf": 8}),
         ("advent", [], {"ndf": 8, "minent_weights": (0.001,)}),
         ("apoda", [], {"ndf": 8}),
         ("dacs", ["mic", {"name": "perturbation", "lambda_target": 1.0}], {})]


@pytest.mark.parametrize("name,addons,options", STEPS, ids=[s[0] for s in STEPS])
def test_every_logit_a_training_step_resizes_uses_the_networks_convention(monkeypatch, name, addons, options):
    for build, expected in ((_fusion, False), (_deeplab, True)):
        method = build_method(name, build(), addons, options)
        seen = _logit_resizes(monkeypatch)
        method.training_step(*_batches())
        monkeypatch.undo()
        assert seen and set(seen) == {expected}, (name, build.__name__, seen)


def test_the_source_ce_is_the_reference_formula_on_the_daformer_network():
    seg = _fusion(seed=2)
    method = build_method("source_only", seg).eval()  # eval: the classifier's dropout off, one forward to compare
    source, _ = _batches(3)
    state = method.forward_domains(source, None)
    up_logits = F.interpolate(state.source.logits, size=(32, 48), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up_logits, source["label"])
    torch.testing.assert_close(method.segmentation_loss(state)["seg"], expected)


def test_evaluation_upsamples_as_the_network_does():
    x = torch.randn(2, 3, 32, 48)
    for seg in (_fusion().eval(), _deeplab().eval()):
        logits = seg.classify(seg.features(x))
        expected = F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=seg.align_corners).softmax(1)
        torch.testing.assert_close(predict_logits(seg, x, (64, 96)), expected)
