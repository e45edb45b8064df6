import pytest
import torch
import torchvision

import uda_perturb as up
from uda_perturb.models.heads import ASPPv2


@pytest.mark.parametrize("name,out_ch,aux_ch,stride", [
    ("resnet50", 2048, 1024, 8), ("resnet18", 512, 256, 8), ("vgg16", 1024, 512, 8),
    ("mobilenet_v3_large", 960, 40, 16), ("lite", 256, 64, 8),
])
def test_backbone_strides_and_channels(name, out_ch, aux_ch, stride):
    bb = up.build_backbone(name).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = bb(x)
    assert bb.out_channels == out_ch and bb.aux_channels == aux_ch and bb.output_stride == stride
    assert out["out"].shape[1] == out_ch and out["aux"].shape[1] == aux_ch
    # DeepLab layout uses a ceil-mode maxpool, so sizes are ceil(64/stride) or one more
    assert out["out"].shape[-2] in (64 // stride, 64 // stride + 1)
    assert out["out"].shape[-1] in (96 // stride, 96 // stride + 1)


def test_resnet101_deeplabv2_paper_model_one_step_tiny():
    seg = up.build_segmentor("deeplabv2", backbone="resnet101", num_classes=19, multi_level=True,
                             backbone_kwargs={"bn": "affine_frozen"})
    x = torch.randn(1, 3, 33, 41)
    y = torch.randint(0, 19, (1, 33, 41))
    out = seg.forward_all(x)
    assert out.logits.shape == (1, 19, 5, 6) and out.aux_logits.shape == (1, 19, 5, 6)
    loss = up.perturb_and_defend(out.features, seg.classifier, labels=y).loss
    loss.backward()
    bn = seg.backbone.body.bn1
    assert bn.weight.requires_grad is False
    assert seg.head.convs[0].weight.grad is not None
    assert seg(x).shape == (1, 19, 33, 41)


def test_frozen_bn_backbone_has_no_bn_parameters():
    bb = up.build_backbone("resnet18", bn="frozen")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())


def test_aspp_v2_sums_branches_and_branch_quirk():
    head = ASPPv2(8, 3)
    x = torch.randn(1, 8, 9, 9)
    expected = sum(conv(x) for conv in head.convs)
    torch.testing.assert_close(head(x), expected)
    assert len(ASPPv2(8, 3, branches=2).convs) == 2
    assert [c.dilation[0] for c in head.convs] == [6, 12, 18, 24]


def test_fc_discriminator_layout_and_stride():
    d = up.build_discriminator("fc", in_channels=19)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert d(torch.randn(1, 19, 64, 128)).shape == (1, 1, 2, 4)
    assert up.build_discriminator("pixel", in_channels=7)(torch.randn(2, 7, 5, 3)).shape == (2, 1, 5, 3)


@pytest.mark.parametrize("ctor", [
    lambda: torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5,
                                                               aux_loss=True),
    lambda: torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=5),
    lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                     num_classes=5),
])
def test_torchvision_split_reproduces_logits(ctor):
    model = ctor().eval()
    split = up.split_torchvision(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)["out"]
        feats = split.features(x)
        torch.testing.assert_close(split(x), ref, rtol=0, atol=0)
        f = split.perturbable(feats)
        torch.testing.assert_close(split.classifier_for(feats)(f), split.classify(feats), rtol=0, atol=0)
    out = up.perturb_and_defend(f, split.classifier_for(feats), labels=torch.randint(0, 5, (1, 64, 64)))
    assert torch.isfinite(out.loss)


def test_load_weights_from_local_file(tmp_path):
    src = up.build_backbone("lite", width=8)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    dst = up.build_backbone("lite", width=8, weights=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])
    with pytest.raises(FileNotFoundError):
        up.build_backbone("lite", weights=str(tmp_path / "missing.pt"))
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="none of its 1 keys match"):
        up.build_backbone("lite", weights=str(tmp_path / "bad.pt"))


def test_lite_output_stride_4_keeps_four_times_the_positions_and_rejects_others():
    import pytest

    from uda_perturb.registry import BACKBONES

    x = torch.randn(1, 3, 64, 96)
    os8, os4 = BACKBONES.build("lite", width=8), BACKBONES.build("lite", width=8, output_stride=4)
    assert os8(x)["out"].shape[-2:] == (8, 12) and os4(x)["out"].shape[-2:] == (16, 24)
    assert os4(x)["aux"].shape[-2:] == (16, 24) and os4.output_stride == 4
    # same parameters, only strides and dilations differ
    assert [p.shape for p in os8.parameters()] == [p.shape for p in os4.parameters()]
    with pytest.raises(ValueError, match="output_stride must be 4 or 8"):
        BACKBONES.build("lite", width=8, output_stride=16)
