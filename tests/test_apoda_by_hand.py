"""The speed benchmark's floor for the comparison model (``apoda_by_hand``: AdaptSegNet plus APODA's default
defense written out) computes what the packaged ``apoda`` computes: the same losses and gradients in one step,
so its time is the floor of the same work."""
import pytest
import torch

from uda_perturb.bench.speed import batches, make


def _step(method: str):
    m = make("camvid_pretrained", method, torch.device("cpu"), ndf=8)
    s, t = batches("camvid_pretrained", (48, 64), 2, torch.device("cpu"))
    torch.manual_seed(1)  # the same dropout masks in both steps
    result = m.training_step(s, t)
    grads = {n: p.grad.clone() for n, p in m.segmentor.named_parameters() if p.grad is not None}
    return result.generator_losses, grads


def test_the_by_hand_floor_is_apodas_default_step():
    (apoda, apoda_grads), (hand, hand_grads) = _step("apoda"), _step("apoda_by_hand")
    assert set(apoda) == set(hand) and {"def_source", "def_target"} <= set(hand)
    for key, value in apoda.items():
        assert hand[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert apoda["def_target"] > 0
    assert set(apoda_grads) == set(hand_grads)
    for name, grad in apoda_grads.items():
        torch.testing.assert_close(hand_grads[name], grad, rtol=1e-3, atol=1e-6)


def test_the_by_hand_floor_refuses_a_head_without_batchnorm_or_dropout():
    m = make("deeplabv2_r50", "apoda_by_hand", torch.device("cpu"))
    s, t = batches("deeplabv2_r50", (32, 32), 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="written for a head with BatchNorm or dropout"):
        m.training_step(s, t)
