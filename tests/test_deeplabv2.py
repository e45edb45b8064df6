"""The paper path exact to the reference code: DeepLab-v2's Caffe ResNet topology (AdaptSegNet
model/deeplab_multi.py, ADVENT model/deeplabv2.py), DeepLab init and torchvision checkpoints loaded into it,
DeepLab-v2 VGG-16 with fc6/fc7 (AdaptSegNet model/deeplab_vgg.py), labels resized as PIL's NEAREST."""
import numpy as np
import pytest
import torch
from PIL import Image

import uda_perturb as up
from uda_perturb.config import ConfigError, load_config
from uda_perturb.data.transforms import Resize
from uda_perturb.engine import build_model
from uda_perturb.errors import CheckpointError
from uda_perturb.models.weights import load_segmentor_weights

# ResNet-101 in DeepLab-v2 (written from the reference, not from our code): per layer the block count, the
# stride of its first block (on conv1, the 1x1) and the dilation of every block's 3x3 conv.
DEEPLABV2_R101 = {"layer1": (3, 1, 1), "layer2": (4, 2, 1), "layer3": (23, 1, 2), "layer4": (3, 1, 4)}


def test_deeplabv2_resnet101_topology_matches_the_reference_block_by_block():
    body = up.build_backbone("resnet101", bn="affine_frozen", layout="deeplabv2").body
    assert body.maxpool.ceil_mode and body.maxpool.stride == 2 and body.conv1.stride == (2, 2)
    for name, (blocks, stride, dilation) in DEEPLABV2_R101.items():
        layer = getattr(body, name)
        assert len(layer) == blocks
        for i, block in enumerate(layer):
            s = stride if i == 0 else 1
            assert block.conv1.stride == (s, s), f"{name}.{i}.conv1 stride"
            assert block.conv2.stride == (1, 1), f"{name}.{i}.conv2 stride"
            assert block.conv2.dilation == (dilation, dilation) == block.conv2.padding, f"{name}.{i}.conv2 dilation"
            assert block.conv1.dilation == (1, 1) and block.conv3.dilation == (1, 1)
            if i == 0:
                assert block.downsample[0].stride == (s, s)
    assert not any(p.requires_grad for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)
                   for p in m.parameters())
    tv = up.build_backbone("resnet101").body  # torchvision's layout differs exactly where the issue says
    assert tv.layer2[0].conv2.stride == (2, 2) and tv.layer3[0].conv2.dilation == (1, 1)
    assert tv.layer4[0].conv2.dilation == (2, 2)


def reference_out_size(i):
    """AdaptSegNet's outS(): the DeepLab-v2 feature size for input side i (321 -> 41)."""
    i = (int(i) + 1) / 2
    i = int(np.ceil((i + 1) / 2.0))
    return int((i + 1) / 2)


def test_deeplabv2_layout_output_stride_8_with_the_reference_sizes():
    assert reference_out_size(321) == 41
    bb = up.build_backbone("resnet50", layout="deeplabv2").eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 96))
    h, w = reference_out_size(64), reference_out_size(96)
    assert out["out"].shape == (1, 2048, h, w) and out["aux"].shape == (1, 1024, h, w)
    with pytest.raises(ValueError, match="Bottleneck"):
        up.build_backbone("resnet18", layout="deeplabv2")


def deeplab_init_state(seg, classes):
    """A state dict with the key names and shapes of the DeepLab init checkpoint (Scale.*, layer5 ASPP)."""
    state = {"Scale." + k.removeprefix("backbone.body."): torch.randn_like(v) if v.is_floating_point() else v
             for k, v in seg.state_dict().items() if k.startswith("backbone.body.")}
    for i in range(4):
        state[f"Scale.layer5.conv2d_list.{i}.weight"] = torch.randn(classes, 2048, 3, 3)
        state[f"Scale.layer5.conv2d_list.{i}.bias"] = torch.randn(classes)
    return state


@pytest.mark.parametrize("classes,head_loaded", [(21, False), (19, True)])
def test_deeplab_init_checkpoint_loads_with_no_missing_backbone_key(tmp_path, classes, head_loaded):
    seg = up.build_segmentor("deeplabv2", backbone="resnet50", num_classes=19, multi_level=True,
                             backbone_kwargs={"bn": "affine_frozen", "layout": "deeplabv2"})
    state = deeplab_init_state(seg, classes)
    torch.save(state, tmp_path / "init.pth")
    report = load_segmentor_weights(seg, str(tmp_path / "init.pth"))
    assert report["format"] == "deeplab_init" and report["missing"] == []
    assert torch.equal(seg.backbone.body.layer3[5].conv2.weight, state["Scale.layer3.5.conv2.weight"])
    assert torch.equal(seg.head.convs[0].weight, state["Scale.layer5.conv2d_list.0.weight"]) == head_loaded
    assert bool(report["skipped_head"]) != head_loaded
    assert seg.backbone.input_normalization == "caffe"


def test_torchvision_checkpoint_loads_under_model_weights_and_declares_imagenet(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    base = ["model.backbone=resnet50", f"model.weights={tmp_path / 'r50.pth'}", "model.backbone_options={}"]
    with pytest.raises(ConfigError, match="normalize' is 'caffe', but the weights of backbone 'resnet50' "
                                          "expect 'imagenet'"):
        build_model(load_config("gta5_cityscapes", base))
    imagenet = [f"data.{k}.transforms.normalize=imagenet" for k in ("source", "target", "eval.cityscapes_val")]
    seg = build_model(load_config("gta5_cityscapes", base + imagenet))
    ref = torch.load(tmp_path / "r50.pth", weights_only=True)
    assert torch.equal(seg.backbone.body.layer4[2].conv3.weight, ref["layer4.2.conv3.weight"])


def test_deeplabv2_vgg16_has_fc6_fc7_and_loads_torchvision_conv_weights(tmp_path):
    bb = up.build_backbone("vgg16")
    fc6, fc7 = bb.body["fc"][0], bb.body["fc"][2]
    assert (fc6.in_channels, fc6.out_channels, fc6.kernel_size, fc6.dilation) == (512, 1024, (3, 3), (4, 4))
    assert (fc7.in_channels, fc7.out_channels, fc7.kernel_size, fc7.dilation) == (1024, 1024, (3, 3), (4, 4))
    assert [c.dilation for c in bb.body["conv5"] if isinstance(c, torch.nn.Conv2d)] == [(2, 2)] * 3
    seg = up.build_segmentor("deeplabv2", backbone="vgg16", num_classes=19)
    assert seg.head.convs[0].in_channels == 1024
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision vgg16.features conv indices
    layers = list(bb.body["features"]) + [None] + list(bb.body["conv5"])
    state = {}
    for i in convs:
        state[f"features.{i}.weight"] = torch.randn_like(layers[i].weight)
        state[f"features.{i}.bias"] = torch.randn_like(layers[i].bias)
    state["classifier.0.weight"] = torch.randn(8, 8)
    torch.save(state, tmp_path / "vgg.pth")
    report = load_segmentor_weights(seg, str(tmp_path / "vgg.pth"))
    assert torch.equal(seg.backbone.body["conv5"][4].weight, state["features.28.weight"])
    assert torch.equal(seg.backbone.body["features"][21].weight, state["features.21.weight"])
    assert sorted(k.split(".")[2] for k in report["missing"]) == ["fc"] * 4  # fc6/fc7 weights and biases
    assert seg.backbone.input_normalization == "imagenet"


def test_labels_resize_like_pil_nearest_at_gta5_scale():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, (12, 1914)).astype(np.uint8)
    ref = np.asarray(Image.fromarray(label).resize((1280, 8), Image.NEAREST))
    _, ours = Resize((8, 1280))(torch.zeros(3, 12, 1914), torch.from_numpy(label.astype(np.int64)))
    assert np.array_equal(ours.numpy(), ref)
    # a step edge stays where the image's edge is: within half an output pixel
    image = torch.zeros(3, 4, 1914)
    image[:, :, 958:] = 1.0
    step = torch.zeros(4, 1914, dtype=torch.long)
    step[:, 958:] = 1
    img, lab = Resize((4, 1280), "bicubic")(image, step)
    img_edge = float((img[0, 0] < 0.5).sum())  # columns left of the image's 50 % crossing
    lab_edge = float((lab[0] == 0).sum())
    assert abs(img_edge - lab_edge) <= 0.5 and abs(lab_edge - 958 * 1280 / 1914) <= 0.5


# ---- the reference networks' own checkpoints, laid out as their code saves them ------------------------------
# ADVENT advent/model/deeplabv2.py ResNetMulti / AdaptSegNet model/deeplab_multi.py: the ResNet body under
# torchvision's names at the top level (conv1, bn1, layer1..layer4), layer5 = ClassifierModule(1024) on layer3
# (multi-level only), layer6 = ClassifierModule(2048) on layer4, each with conv2d_list.0..3 (AdaptSegNet's
# forward returns after the first two). AdaptSegNet's single-level Res_Deeplab: layer5 = ClassifierModule(2048).


def _reference_state(seg, heads):
    """``seg``'s weights under the reference names; ``heads`` maps a reference prefix to (our head, branches
    saved)."""
    state = {k.removeprefix("backbone.body."): v for k, v in seg.state_dict().items() if k.startswith("backbone.")}
    for prefix, (ours, saved) in heads.items():
        module = getattr(seg, ours)
        for i in range(saved):
            conv = module.convs[i] if i < len(module.convs) else torch.nn.Conv2d(module.convs[0].in_channels,
                                                                                module.convs[0].out_channels, 3)
            state[f"{prefix}.conv2d_list.{i}.weight"] = conv.weight.detach().clone()
            state[f"{prefix}.conv2d_list.{i}.bias"] = conv.bias.detach().clone()
    return state


def _randomise(seg):
    with torch.no_grad():
        for p in seg.parameters():
            p.normal_(0, 0.05)
        for m in seg.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return seg.eval()


def _outputs(seg, x):
    with torch.no_grad():
        out = seg.forward_all(x)
    return out.logits, out.aux_logits


@pytest.mark.parametrize("multi_level,branches,heads", [
    (True, 4, {"layer5": ("aux_head", 4), "layer6": ("head", 4)}),    # ADVENT, multi-level
    (False, 4, {"layer6": ("head", 4)}),                              # ADVENT, single-level
    (True, 2, {"layer5": ("aux_head", 4), "layer6": ("head", 4)}),    # AdaptSegNet, multi-level (2 summed)
    (False, 2, {"layer5": ("head", 4)}),                              # AdaptSegNet single-level Res_Deeplab
])
def test_trained_reference_resnet_models_load_with_both_heads_and_give_their_outputs(tmp_path, multi_level,
                                                                                   branches, heads):
    kw = dict(num_classes=5, multi_level=multi_level, head_kwargs={"branches": branches})
    original = _randomise(up.build_segmentor("deeplabv2", backbone="resnet50", **kw))
    torch.save(_reference_state(original, heads), tmp_path / "model.pth")
    loaded = up.build_segmentor("deeplabv2", backbone="resnet50", **kw)
    report = load_segmentor_weights(loaded, str(tmp_path / "model.pth"))
    assert report["format"] == "deeplabv2" and report["missing"] == [] and report["heads_loaded"]
    unused = {f"{p}.conv2d_list.{i}.{t}" for p in heads for i in range(branches, 4) for t in ("weight", "bias")}
    assert set(report["unexpected"]) == unused  # AdaptSegNet saves the two branches its forward never sums
    x = torch.randn(1, 3, 40, 56)
    for a, b in zip(_outputs(original, x), _outputs(loaded.eval(), x)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    assert loaded.backbone.input_normalization == "caffe"


def test_adaptsegnet_two_branch_head_sums_the_dilation_6_and_12_convs():
    seg = _randomise(up.build_segmentor("deeplabv2", backbone="resnet50", num_classes=3,
                                        head_kwargs={"branches": 2}))
    f = torch.randn(1, 2048, 6, 7)
    c0, c1 = seg.head.convs
    assert (c0.dilation, c1.dilation) == ((6, 6), (12, 12))
    expected = (torch.nn.functional.conv2d(f, c0.weight, c0.bias, padding=6, dilation=6)
                + torch.nn.functional.conv2d(f, c1.weight, c1.bias, padding=12, dilation=12))
    torch.testing.assert_close(seg.classify(f), expected)


def test_adaptsegnet_deeplab_vgg_model_loads_every_tensor_and_gives_its_output(tmp_path):
    # AdaptSegNet model/deeplab_vgg.py: vgg16.features without pool4 (index 23) and pool5, renumbered, then fc6
    # (index 29) and fc7 (31) appended; classifier = Classifier_Module(1024) with conv2d_list.0..3
    original = _randomise(up.build_segmentor("deeplabv2", backbone="vgg16", num_classes=5,
                                             head_kwargs={"branches": 2}))
    body = original.backbone.body
    layers = list(body["features"]) + list(body["conv5"]) + list(body["fc"])  # their features, in order
    state = {}
    for i, layer in enumerate(layers):
        if isinstance(layer, torch.nn.Conv2d):
            state[f"features.{i}.weight"], state[f"features.{i}.bias"] = layer.weight.detach(), layer.bias.detach()
    assert [i for i in range(32) if f"features.{i}.weight" in state][-2:] == [29, 31]
    for i in range(4):
        conv = original.head.convs[i] if i < 2 else torch.nn.Conv2d(1024, 5, 3)
        state[f"classifier.conv2d_list.{i}.weight"], state[f"classifier.conv2d_list.{i}.bias"] = conv.weight, conv.bias
    assert len(state) == 38
    torch.save({k: v.detach().clone() for k, v in state.items()}, tmp_path / "vgg.pth")
    loaded = up.build_segmentor("deeplabv2", backbone="vgg16", num_classes=5, head_kwargs={"branches": 2})
    report = load_segmentor_weights(loaded, str(tmp_path / "vgg.pth"))
    assert report["format"] == "deeplabv2_vgg" and report["missing"] == [] and report["loaded"] == 34
    assert len(report["unexpected"]) == 4 and loaded.backbone.input_normalization == "caffe"
    x = torch.randn(1, 3, 48, 64)
    torch.testing.assert_close(_outputs(original, x)[0], _outputs(loaded.eval(), x)[0])


def test_quick_api_deeplabv2_is_the_caffe_network_and_refuses_deeplab_weights_in_torchvision_layout(tmp_path):
    seg = up.build_segmentor("deeplabv2", backbone="resnet50", num_classes=19, multi_level=True)
    assert seg.backbone.layout == "deeplabv2" and seg.backbone.body.layer2[0].conv1.stride == (2, 2)
    assert not any(p.requires_grad for m in seg.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)
                   for p in m.parameters())
    tv = up.build_segmentor("deeplabv2", backbone="resnet50", num_classes=19, multi_level=True,
                            backbone_kwargs={"layout": "torchvision"})
    assert tv.backbone.layout == "torchvision"
    torch.save(deeplab_init_state(seg, 19), tmp_path / "init.pth")
    with pytest.raises(CheckpointError, match="layout: deeplabv2"):
        load_segmentor_weights(tv, str(tmp_path / "init.pth"))


def test_cli_evaluates_a_reference_trained_model_with_the_recipe_network(tmp_path, capsys):
    from uda_perturb.cli import _load_segmentor

    cfg = load_config("gta5_cityscapes", ["model.backbone=resnet50", "model.num_classes=5"])
    original = _randomise(build_model(cfg))
    torch.save(_reference_state(original, {"layer5": ("aux_head", 4), "layer6": ("head", 4)}), tmp_path / "m.pth")
    loaded = _load_segmentor(cfg, str(tmp_path / "m.pth"))
    assert "deeplabv2 model" in capsys.readouterr().err
    x = torch.randn(1, 3, 40, 56)
    for a, b in zip(_outputs(original, x), _outputs(loaded, x)):
        torch.testing.assert_close(a, b)


def _bottleneck_reference(block, x, stride, dilation):
    """A Caffe DeepLab-v2 bottleneck, from its definition: 1x1 (stride) -> 3x3 (dilation) -> 1x1, BN (running
    statistics) after each, shortcut 1x1 (stride) + BN, ReLU after the sum."""
    def bn(m, y):
        return torch.nn.functional.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    conv = torch.nn.functional.conv2d
    y = torch.relu(bn(block.bn1, conv(x, block.conv1.weight, stride=stride)))
    y = torch.relu(bn(block.bn2, conv(y, block.conv2.weight, padding=dilation, dilation=dilation)))
    y = bn(block.bn3, conv(y, block.conv3.weight))
    shortcut = bn(block.downsample[1], conv(x, block.downsample[0].weight, stride=stride))
    return torch.relu(y + shortcut)


@pytest.mark.parametrize("layer,stride,dilation", [("layer2", 2, 1), ("layer3", 1, 2), ("layer4", 1, 4)])
def test_deeplabv2_first_blocks_compute_what_the_caffe_definition_computes(layer, stride, dilation):
    seg = _randomise(up.build_segmentor("deeplabv2", backbone="resnet50", num_classes=3))
    block = getattr(seg.backbone.body, layer)[0]
    x = torch.randn(1, block.conv1.in_channels, 12, 14)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _bottleneck_reference(block, x, stride, dilation))
