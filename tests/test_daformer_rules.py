"""DAFormer's rules outside the DACS step: AdamW without decay on normalisation parameters, rare-class sampling's
crop re-draws as the training stream applies them, and imnet_fd's frozen copy holding the ImageNet weights by
whichever route they came."""
import pytest
import torch
from helpers import tiny_config
from torch import nn

import uda_perturb as up
from uda_perturb.config import RareClassSamplingConfig, TransformConfig
from uda_perturb.data.rare_class_sampling import DAFORMER_TRAINING_SCALE, crop_thresholds
from uda_perturb.data.transforms import RandomScaleCrop
from uda_perturb.engine.distributed import DistInfo
from uda_perturb.engine.loaders import stream
from uda_perturb.engine.optim import build_optimizers
from uda_perturb.errors import ConfigError
from uda_perturb.methods import build_method
from uda_perturb.methods.feature_distance import ImageNetFeatureDistance


def _method(*extra):
    cfg = tiny_config("source_only", *extra)
    return build_method("source_only", up.engine.build_model(cfg), [], {}), cfg


def test_adamw_gives_the_backbones_norm_parameters_no_decay_and_decays_the_rest():
    method, cfg = _method("train.optimizer=adamw", "train.weight_decay=0.01", "train.lr=0.001")
    backbone = method.segmentor.backbone
    norms = {id(p) for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for p in m.parameters(recurse=False)}
    assert norms  # the tiny backbone has BatchNorm layers
    groups = build_optimizers(method, cfg.train)["segmentor"].param_groups
    by_param = {id(p): (g["weight_decay"], g["lr"]) for g in groups for p in g["params"]}
    for p in backbone.parameters():
        assert by_param[id(p)] == ((0.0, 0.001) if id(p) in norms else (0.01, 0.001))
    for p in method.segmentor.head.parameters():  # DAFormer's 'head' key wins: its norms decay too
        assert by_param[id(p)] == (0.01, 0.001 * cfg.train.head_lr_mult)
    assert sum(len(g["params"]) for g in groups) == len(list(method.segmentor.parameters()))
    # the earlier rule on request, and SGD untouched
    cfg2 = tiny_config("source_only", "train.optimizer=adamw", "train.decay_norm=true")
    assert {g["weight_decay"] for g in build_optimizers(method, cfg2.train)["segmentor"].param_groups} == {5e-4}
    cfg3 = tiny_config("source_only")
    assert len(build_optimizers(method, cfg3.train)["segmentor"].param_groups) == 2


class _Corner(torch.utils.data.Dataset):
    """One 40 x 40 label, class 1 in a 10 x 10 corner; items crop 20 x 20 at random."""

    def __len__(self):
        return 1

    def read_label(self, i):  # the full-resolution label, as the datasets' readers give it
        label = torch.zeros(40, 40, dtype=torch.long)
        label[:10, :10] = 1
        return label

    def __getitem__(self, i):
        img, lab = RandomScaleCrop((20, 20))(torch.zeros(3, 40, 40), self.read_label(i))
        return {"image": img, "label": lab}


def _class_pixels(transforms, n=60):
    rcs = RareClassSamplingConfig(temperature=0.01, min_pixels=50, min_crop_ratio=0.1)
    it = stream(_Corner(), 1, 0, 0, DistInfo(), rare_class_sampling=rcs, num_classes=2, transforms=transforms)
    return [int((next(it)["label"] == 1).sum()) for _ in range(n)]


def test_the_stream_redraws_crops_that_miss_the_sampled_class_only_when_the_transforms_crop():
    threshold = 50 * 0.1 / DAFORMER_TRAINING_SCALE  # no resize: the image's own scale
    with_crop = _class_pixels(TransformConfig(crop=[20, 20]))
    without = _class_pixels(None)  # the same crops, no re-draw (the transforms say they do not crop)
    share = lambda counts: sum(c > threshold for c in counts) / len(counts)  # noqa: E731
    assert share(without) < 0.4 and share(with_crop) > 0.8
    # exactly resumable: starting at position 7 gives the uninterrupted stream's items from there
    rcs = RareClassSamplingConfig(temperature=0.01, min_pixels=50, min_crop_ratio=0.1)
    later = stream(_Corner(), 1, 0, 7, DistInfo(), rare_class_sampling=rcs, num_classes=2,
                   transforms=TransformConfig(crop=[20, 20]))
    assert [int((next(later)["label"] == 1).sum()) for _ in range(5)] == with_crop[7:12]


def test_crop_threshold_scales_with_the_training_scale_relative_to_daformers():
    # DAFormer's own scale gives its threshold back; a 9x smaller share of the pixels, a 9x lower threshold
    gta = crop_thresholds([1914 * 1052], [720, 1280], 3000, 0.5)
    assert gta[0] == pytest.approx(1500.0)
    camvid = crop_thresholds([480 * 360], [120, 160], 3000, 0.5)
    assert camvid[0] == pytest.approx(1500.0 * (1 / 9) / DAFORMER_TRAINING_SCALE)
    assert crop_thresholds([400], None, 100, 0.5)[0] == pytest.approx(50 / DAFORMER_TRAINING_SCALE)


def test_imnet_fd_copy_holds_exactly_the_imagenet_checkpoint_loaded_through_model_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for p in imagenet.parameters():
            p.add_(torch.randn_like(p))  # not what a fresh resnet18 holds
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    cfg = tiny_config("source_only", "model.backbone=resnet18", "model.backbone_options={}",
                      f"model.weights={path}", "data.source.transforms.normalize=imagenet",
                      "data.target.transforms.normalize=imagenet", "data.eval={}")
    seg = up.engine.build_model(cfg)
    method = build_method("source_only", seg, ["imnet_fd"], {})
    frozen = method.addons[0]._frozen[0]
    loaded = imagenet.state_dict()
    own = dict(frozen.named_parameters())
    assert own and all(torch.equal(p, loaded[name.replace("body.", "")]) for name, p in own.items()
                       if name.replace("body.", "") in loaded)
    matched = [n for n in own if n.replace("body.", "") in loaded]
    assert len(matched) == len(own)  # every frozen parameter is the checkpoint's
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training


def test_imnet_fd_refuses_a_backbone_without_imagenet_weights_by_any_route():
    seg = up.build_segmentor("conv1x1", backbone="lite", num_classes=3, backbone_kwargs={"width": 8})
    with pytest.raises(ConfigError, match="imnet_fd needs a backbone with ImageNet weights"):
        ImageNetFeatureDistance().imagenet_copy(seg.backbone)
