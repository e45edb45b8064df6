"""D's input is built like the caller's: ``upsample=`` takes the caller's own upsampler (AdaptSegNet's ``interp``,
``align_corners=False``) for every pixel-size map, and a ``split_torchvision`` view carries torchvision's
convention without being told."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

import uda_perturb as up

K, H, W = 4, 24, 40


class RecordingD(nn.Module):
    """A 1x1 discriminator that keeps every input it is given."""

    def __init__(self, channels=K):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(channels, 1, 1)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.conv(x)


def test_the_callers_upsampler_builds_every_pixel_map_and_d_sees_what_the_loop_trains_it_on():
    torch.manual_seed(0)
    head = nn.Conv2d(6, K, 1)
    f = torch.randn(2, 6, 6, 10)
    interp = nn.Upsample(size=(H, W), mode="bilinear")  # AdaptSegNet's: align_corners=False
    D = RecordingD()
    out = up.perturb_and_defend(f, head, domain="target", discriminator=D, upsample=interp, eps=0.1)
    theirs = F.softmax(interp(head(f)), dim=1)  # what their loop feeds D for the target adversarial loss
    torch.testing.assert_close(D.seen[0], theirs)  # the attack's first D input: at f0
    ours_default = F.softmax(F.interpolate(head(f), (H, W), mode="bilinear", align_corners=True), dim=1)
    assert (D.seen[0] - ours_default).abs().max() > 1e-3  # the convention matters at this size
    # the KL defense compares the two predictions at pixel size through the same upsampler
    p, q = F.softmax(interp(head(f)), 1), F.log_softmax(interp(head(out.perturbed)), 1)
    expected = (p * (p.clamp_min(1e-30).log() - q)).sum(1).mean()
    torch.testing.assert_close(out.losses["kl"], expected, atol=1e-6, rtol=1e-5)


def test_labels_are_met_through_the_upsampler_and_a_wrong_size_is_refused():
    torch.manual_seed(0)
    head = nn.Conv2d(6, K, 1)
    f, y = torch.randn(2, 6, 6, 10), torch.randint(0, K, (2, H, W))
    interp = nn.Upsample(size=(H, W), mode="bilinear")
    out = up.perturb_and_defend(f, head, labels=y, upsample=interp, eps=0.1)
    torch.testing.assert_close(out.losses["ce"], F.cross_entropy(interp(head(out.perturbed)), y))
    with pytest.raises(ValueError, match=r"upsample= returned \(2, 4, 12, 20\); it must map .* at the pixel size"):
        up.perturb_and_defend(f, head, labels=y, upsample=nn.Upsample(size=(12, 20), mode="bilinear"))
    with pytest.raises(ValueError, match="pass upsample= or align_corners=, not both"):
        up.perturb_and_defend(f, head, labels=y, upsample=interp, align_corners=True)


def test_a_torchvision_view_upsamples_as_torchvision_whichever_callable_is_passed():
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=K)
    with torch.no_grad():  # fresh BatchNorm statistics and peaky logits, so that the convention shows
        for _ in range(3):
            model.train()(torch.randn(2, 3, 64, 96))
        model.classifier[-1].weight.mul_(300.0)
    model.eval()
    view = up.split_torchvision(model)
    x = torch.randn(1, 3, 64, 96)
    f = view.features(x)
    theirs = F.softmax(model(x)["out"], dim=1)  # torchvision's own upsampling of the same logits
    other = F.softmax(F.interpolate(view.classify(f), (64, 96), mode="bilinear", align_corners=True), dim=1)
    assert (theirs - other).abs().max() > 0.05
    for classifier in (view.classify, view.classifier, lambda z: view.classify(z)):
        D = RecordingD()
        up.perturb_and_defend(f, classifier, domain="target", discriminator=D, output_size=(64, 96))
        torch.testing.assert_close(D.seen[0], theirs, atol=1e-5, rtol=1e-4)
