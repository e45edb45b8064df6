"""timm backbones and the offline EfficientNet-Lite ImageNet weights (pretrained extra).

The parity tests compare against ``efficientnet-lite-pytorch``, the reference implementation the weight
packages were written for: its ImageNet logits and its last-block features equal ours within 1e-4.
They are skipped, not failed, where the extras are absent (CI installs them).
"""
import pytest
import torch

import uda_perturb as up
from uda_perturb.config import ConfigError, load_config
from uda_perturb.data.transforms import Normalize
from uda_perturb.engine import build_model
from uda_perturb.engine.optim import build_optimizers
from uda_perturb.methods import build_method
from uda_perturb.models.timm_backbone import efficientnet_pytorch_to_timm, shipped_lite_weights

timm = pytest.importorskip("timm")

SIZES = {0: 224, 1: 240, 2: 260}  # the reference implementation's static 'same' padding is built for these


def reference_lite(variant):
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    try:
        path = shipped_lite_weights(variant)
    except ImportError:
        pytest.skip("pretrained extra not installed")
    return ref_pkg.EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=path).eval(), path


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_imagenet_logits_equal_reference(variant):
    ref, path = reference_lite(variant)
    ours = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).eval()
    own = ours.state_dict()
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    ours.load_state_dict(efficientnet_pytorch_to_timm(shipped, list(own), {k: v.shape for k, v in own.items()}))
    x = torch.randn(2, 3, SIZES[variant], SIZES[variant])
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=0)


def test_lite0_backbone_features_equal_reference_last_block():
    ref, _ = reference_lite(0)
    captured = {}
    ref._blocks[-1].register_forward_hook(lambda m, i, o: captured.update(out=o))
    ours = up.build_backbone("efficientnet_lite0", output_stride=32).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref(x)
        feats = ours(x)
    assert ours.out_channels == 320 and ours.aux_channels == 112 and ours.input_normalization == "inception"
    torch.testing.assert_close(feats["out"], captured["out"], atol=1e-4, rtol=0)


def test_lite0_output_stride_8_keeps_resolution_and_loads_every_tensor():
    try:
        bb = up.build_backbone("efficientnet_lite0").eval()
    except ImportError:
        pytest.skip("pretrained extra not installed")
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 96))
    assert bb.output_stride == 8 and out["out"].shape == (1, 320, 8, 12) and out["aux"].shape == (1, 112, 8, 12)
    shipped = torch.load(shipped_lite_weights(0), weights_only=True)
    assert torch.equal(bb.body.conv_stem.weight, shipped["_conv_stem.weight"])


def test_timm_backbone_channels_strides_and_bad_options():
    bb = up.build_backbone("timm", model_name="resnet18", output_stride=8).eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 96))
    assert (bb.out_channels, bb.aux_channels, bb.output_stride) == (512, 256, 8)
    assert out["out"].shape == (1, 512, 8, 12) and out["aux"].shape == (1, 256, 8, 12)
    assert bb.input_normalization is None  # random weights: any normalisation is acceptable
    with pytest.raises(KeyError, match="Did you mean.*resnet18"):
        up.build_backbone("timm", model_name="resnet_18")
    with pytest.raises(ValueError, match="aux_index before out_index"):
        up.build_backbone("timm", model_name="resnet18", out_index=1, aux_index=3)


def test_timm_backbone_loads_local_checkpoint_and_declares_its_normalisation(tmp_path):
    full = timm.create_model("resnet18", pretrained=False)
    torch.save(full.state_dict(), tmp_path / "r18.pth")
    bb = up.build_backbone("timm", model_name="resnet18", weights=str(tmp_path / "r18.pth"))
    assert torch.equal(bb.body.layer4[1].conv2.weight, full.layer4[1].conv2.weight)
    assert bb.input_normalization == "imagenet"
    torch.save({"conv1.weight": full.conv1.weight}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="unset"):
        up.build_backbone("timm", model_name="resnet18", weights=str(tmp_path / "partial.pth"))


def test_frozen_stages_get_no_grads_and_keep_their_bn_statistics():
    bb = up.build_backbone("timm", model_name="resnet18", frozen_stages=2).train()
    stem_bn = bb.body.bn1
    before = stem_bn.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64) * 3 + 1)["out"].sum().backward()
    assert not stem_bn.training and torch.equal(stem_bn.running_mean, before)
    assert bb.body.conv1.weight.grad is None and bb.body.layer1[0].conv1.weight.grad is None
    assert bb.body.layer2[0].conv1.weight.grad is not None and bb.body.layer2[0].bn1.training


def test_recipe_normalisation_must_match_the_weights():
    try:
        shipped_lite_weights(0)
    except ImportError:
        pytest.skip("pretrained extra not installed")
    cfg = load_config("camvid_day2dusk_pretrained", ["data.target.transforms.normalize=imagenet"])
    with pytest.raises(ConfigError, match="data.target.transforms.normalize' is 'imagenet'.*expect 'inception'"):
        build_model(cfg)
    assert build_model(load_config("camvid_day2dusk_pretrained")).backbone.input_normalization == "inception"


def test_inception_normalisation_is_exact():
    x = torch.rand(3, 4, 5)
    torch.testing.assert_close(Normalize("inception")(x)[0], (x - 0.5) / 0.5)


def test_adamw_option_keeps_the_head_multiplier_and_names_bad_values():
    cfg = load_config("synthetic_demo", ["train.optimizer=adamw", "train.lr=0.001", "train.head_lr_mult=10"])
    opt = build_optimizers(build_method("source_only", build_model(cfg)), cfg.train)["segmentor"]
    # backbone, backbone norms (no weight decay, as DAFormer), heads
    assert isinstance(opt, torch.optim.AdamW) and [g["lr"] for g in opt.param_groups] == [0.001, 0.001, 0.01]
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.train.weight_decay, 0.0, cfg.train.weight_decay]
    with pytest.raises(ConfigError, match="did you mean 'adamw'"):
        load_config("synthetic_demo", ["train.optimizer=adamv"])
