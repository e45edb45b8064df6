"""DAFormer's ImageNet feature distance (``imnet_fd``) at the call a method makes: the loss against a value
computed here from its definition (class-masked on a feature map whose label grid does not divide evenly),
the argument checks with their full messages, the frozen copy's device, and the pooling rule's edge cases."""
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from uda_perturb.errors import ConfigError
from uda_perturb.methods.feature_distance import ImageNetFeatureDistance, downscale_label_ratio, masked_feature_distance


class _Frozen(nn.Module):
    """A stand-in frozen copy whose features are fixed."""

    def __init__(self, out):
        super().__init__()
        self.out, self.p = out, nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return {"out": self.out}


def _call(addon, student, frozen, labels, num_classes=4):
    addon._frozen = [_Frozen(frozen)]
    state = SimpleNamespace(source_batch={"image": torch.zeros(1, 3, *labels.shape[-2:])},
                            source=SimpleNamespace(features=student), labels=labels)
    return addon(SimpleNamespace(num_classes=num_classes), state)


def test_the_class_masked_distance_on_an_uneven_grid_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 4, (1, 6, 8), generator=g)  # labels in 2 x 2 blocks: 12 x 16 pixels
    labels = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)
    labels[:, ::2, ::2] = (coarse + 1) % 4  # each block's top-left pixel differs: its majority holds 3/4 of it
    student, frozen = torch.randn(1, 3, 5, 8, generator=g), torch.randn(1, 3, 5, 8, generator=g)
    addon = ImageNetFeatureDistance(lambda_fd=0.5, classes=[1, 3])
    losses, stats = _call(addon, student, frozen, labels)
    # the width sets the factor (16 // 8 = 2): 6 x 8 block labels, resized to 5 x 8 by nearest rows 0..4
    rows = [int(i * 6 / 5) for i in range(5)]
    keep = torch.isin(coarse[:, rows], torch.tensor([1, 3]))
    dist = ((student - frozen) ** 2).sum(1).sqrt()
    torch.testing.assert_close(losses["imnet_fd"], 0.5 * dist[keep].mean())
    assert list(stats) == ["imnet_fd_share"] and stats["imnet_fd_share"] == pytest.approx(keep.float().mean().item())


def test_without_classes_every_position_counts():
    g = torch.Generator().manual_seed(1)
    student, frozen = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    losses, stats = _call(ImageNetFeatureDistance(lambda_fd=2.0), student, frozen, torch.zeros(2, 8, 10).long())
    torch.testing.assert_close(losses["imnet_fd"], 2.0 * ((student - frozen) ** 2).sum(1).sqrt().mean())
    assert stats == {"imnet_fd_share": 1.0}


def test_an_empty_mask_gives_zero_with_a_graph():
    student = torch.full((1, 2, 1, 3), 2.0, requires_grad=True)
    loss = masked_feature_distance(student, torch.zeros(1, 2, 1, 3), torch.zeros(1, 1, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad


def test_pooling_keeps_labels_at_factor_one_and_pools_ignore_as_its_own_class():
    lab = torch.tensor([[[0, 255], [3, 3]]])
    same = downscale_label_ratio(lab, 1, 0.75, num_classes=4)
    assert torch.equal(same, lab) and same.data_ptr() != lab.data_ptr()
    assert downscale_label_ratio(lab, 2, 0.5, num_classes=4).tolist() == [[[3]]]
    assert downscale_label_ratio(torch.tensor([[[255, 255], [255, 3]]]), 2, 0.1, 4).tolist() == [[[255]]]


def test_arguments_are_checked_with_their_full_message():
    for lam, ratio in ((0.0, 0.0), (0.0, 1.0), (1.0, 0.5)):
        ImageNetFeatureDistance(lambda_fd=lam, scale_min_ratio=ratio)
    for lam, ratio in ((-0.1, 0.5), (0.1, 1.5), (0.1, -0.1)):
        with pytest.raises(ValueError, match="^" + re.escape("imnet_fd needs lambda_fd >= 0 and scale_min_ratio in "
                                                             f"[0, 1], got {lam} and {ratio}") + "$"):
            ImageNetFeatureDistance(lambda_fd=lam, scale_min_ratio=ratio)


def _method(num_classes, backbone=None):
    return SimpleNamespace(segmentor=SimpleNamespace(backbone=backbone, num_classes=num_classes))


def test_classes_must_be_train_ids_of_the_model(monkeypatch):
    monkeypatch.setattr(ImageNetFeatureDistance, "imagenet_copy", staticmethod(lambda backbone: "copy"))
    for classes in ([0, 3], [2]):
        addon = ImageNetFeatureDistance(classes=classes)
        addon.check(_method(4))
        assert addon._frozen == ["copy"]
    ImageNetFeatureDistance(classes=[9]).check(_method(None))  # a model without a class count: not checked
    for bad in ([4], [-1, 1]):
        with pytest.raises(ConfigError, match="^" + re.escape(f"imnet_fd classes {[c for c in bad if c not in (1,)]}"
                                                              " are not train ids of a 4-class model") + "$"):
            ImageNetFeatureDistance(classes=bad).check(_method(4))


def test_the_frozen_copy_needs_a_named_backbone_with_imagenet_weights():
    named = ("imnet_fd needs a backbone built by name (build_segmentor / model.backbone), to build its frozen "
             "ImageNet copy")
    with pytest.raises(ConfigError, match="^" + re.escape(named) + "$"):
        ImageNetFeatureDistance.imagenet_copy(nn.Conv2d(3, 3, 1))
    import uda_perturb as up

    seg = up.build_segmentor("conv1x1", backbone="lite", num_classes=3, backbone_kwargs={"width": 8})
    with pytest.raises(ConfigError, match="^" + re.escape(
            "imnet_fd needs a backbone with ImageNet weights; 'lite' was built without them (set pretrained/weights "
            "in model.backbone_options, or model.weights to an ImageNet checkpoint)") + "$"):
        ImageNetFeatureDistance.imagenet_copy(seg.backbone)


def test_the_frozen_copy_moves_to_the_features_device():
    addon = ImageNetFeatureDistance()
    with pytest.raises(AssertionError, match="^check\\(\\) builds the frozen copy when the add-on is attached$"):
        addon.frozen_backbone(torch.zeros(1))
    addon._frozen = [nn.Linear(2, 2)]
    net = addon.frozen_backbone(torch.zeros(1, device="meta"))
    assert net is addon._frozen[0] and len(addon._frozen) == 1
    assert next(net.parameters()).device.type == "meta"


def test_the_source_batch_is_required():
    state = SimpleNamespace(source_batch=None)
    with pytest.raises(AssertionError, match="^imnet_fd reads the source images from the step's batches$"):
        ImageNetFeatureDistance()(SimpleNamespace(num_classes=4), state)


def test_behind_a_fusion_head_the_distance_reads_the_encoders_last_stage():
    g = torch.Generator().manual_seed(3)
    enc, frozen = torch.randn(1, 3, 2, 3, generator=g), torch.randn(1, 3, 2, 3, generator=g)
    addon = ImageNetFeatureDistance(lambda_fd=1.0)
    addon._frozen = [_Frozen(frozen)]
    state = SimpleNamespace(source_batch={"image": torch.zeros(1, 3, 8, 12)}, labels=torch.zeros(1, 8, 12).long(),
                            source=SimpleNamespace(features=torch.randn(1, 16, 4, 6), encoder_features=enc))
    losses, _ = addon(SimpleNamespace(num_classes=4), state)
    torch.testing.assert_close(losses["imnet_fd"], ((enc - frozen) ** 2).sum(1).sqrt().mean())
