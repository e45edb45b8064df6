import torch
from torch import nn

from uda_perturb.engine.evaluate import evaluate, predict_logits


class Asymmetric(nn.Module):
    """Logits depend on the horizontal position, so flipping changes them."""

    def forward(self, x):
        ramp = torch.linspace(-2, 2, x.shape[-1]).view(1, 1, 1, -1)
        return torch.cat([x[:, :1] * ramp, -x[:, :1] * ramp], 1)


def test_flip_and_multiscale_average_softmax():
    m = Asymmetric()
    x = torch.rand(1, 3, 4, 6)
    flip = predict_logits(m, x, (4, 6), flip=True)
    expected = m(x).softmax(1) + m(x.flip(-1)).softmax(1).flip(-1)
    torch.testing.assert_close(flip, expected)
    ms = predict_logits(m, x, (4, 6), scales=(1.0, 0.5))
    assert ms.shape == (1, 2, 4, 6) and torch.allclose(ms.sum(1), torch.full((1, 4, 6), 2.0))


def test_evaluate_restores_mode_and_upsamples_to_label_size():
    m = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Dropout(0.5)).train()
    loader = [{"image": torch.rand(2, 3, 4, 6), "label": torch.randint(0, 2, (2, 8, 12))}]
    cm = evaluate(m, loader, 2, eval_size=(2, 3))
    assert int(cm.hist.sum()) == 2 * 8 * 12
    assert m.training


def test_evaluate_accumulates_entropy_of_the_averaged_prediction():
    from uda_perturb.metrics import EntropyMeter

    m = Asymmetric()
    x = torch.rand(1, 3, 4, 6)
    meter = EntropyMeter()
    evaluate(m, [{"image": x, "label": torch.zeros(1, 4, 6, dtype=torch.long)}], 2, flip=True, entropy=meter)
    p = (m(x).softmax(1) + m(x.flip(-1)).softmax(1).flip(-1)) / 2  # flip views are averaged first
    expected = float((-(p * p.log()).sum(1) / torch.log(torch.tensor(2.0))).mean())
    assert abs(meter.mean() - expected) < 1e-6
