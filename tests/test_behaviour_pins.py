"""Behaviours a mutation run found unpinned, each checked by value: labels follow their image through every
transform, the trainer wires the EMA step, rare-class crops hold their class, the label-id tables entry by
entry, the dropout control's rate, gradient accumulation, multi-scale evaluation."""
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config
from torch import nn

from uda_perturb.data.label_maps import CITYSCAPES_16, CITYSCAPES_19, IGNORE, SYNTHIA_16, SYNTHIA_19
from uda_perturb.data.transforms import RandomHorizontalFlip, RandomScaleCrop, Resize, build_transforms
from uda_perturb.engine import Trainer
from uda_perturb.engine.evaluate import predict_logits
from uda_perturb.engine.loaders import SeededItems, redraw_seed
from uda_perturb.registry import ATTACKS


def _blocks(h=48, w=64, block=8):
    """A label of 8 x 8 blocks of classes 0..9 (none at the borders) and an image whose pixels are label / 10."""
    g = torch.Generator().manual_seed(3)
    coarse = torch.randint(0, 10, (h // block, w // block), generator=g)
    label = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return (label.float() / 10).expand(3, h, w).clone(), label


def _interior(label):
    """Pixels whose 5 x 5 neighbourhood holds one label (resampling cannot blend classes there), away from the
    border (whose neighbours before a crop are not in the label)."""
    x = label[None, None].float()
    lo, hi = -F.max_pool2d(-x, 5, 1, 2), F.max_pool2d(x, 5, 1, 2)
    inside = ((lo == hi) & (x != IGNORE))[0, 0]
    inside[:2], inside[-2:], inside[:, :2], inside[:, -2:] = False, False, False, False
    return inside


@pytest.mark.parametrize("transform", [RandomHorizontalFlip(p=1.0), Resize((30, 41)), Resize((30, 41), "bicubic"),
                                       RandomScaleCrop((40, 48), (0.6, 1.4)), RandomScaleCrop((64, 80), (1.0, 1.0)),
                                       build_transforms(crop=[40, 48], scale=[0.7, 1.3], flip=True,
                                                        normalize="none")])
def test_labels_follow_their_image_through_every_transform(transform):
    image, label = _blocks()
    for seed in range(4):
        torch.manual_seed(seed)
        img, lab = transform(image, label)
        inside = _interior(lab)
        assert inside.sum() > 50
        torch.testing.assert_close(img[0][inside] * 10, lab[inside].float(), atol=1e-3, rtol=0)


def test_flip_moves_the_label_with_the_image():
    image, label = _blocks()
    img, lab = RandomHorizontalFlip(p=1.0)(image, label)
    assert torch.equal(lab, label.flip(-1)) and torch.equal(img, image.flip(-1))


def test_trainer_updates_the_teacher_with_the_ema_of_steps_1_and_2(tmp_path):
    t = Trainer(tiny_config("dacs", "train.iters=2"), tmp_path / "r", progress=False)
    teacher = t.method.teacher
    w0 = teacher.model.head.conv.weight.clone()
    seen, update = [], teacher.update

    def spy(student, step):
        seen.append((step, student.head.conv.weight.detach().clone()))
        update(student, step)

    teacher.update = spy
    t.fit()
    assert [s for s, _ in seen] == [1, 2]
    w1 = 0.5 * w0 + 0.5 * seen[0][1]  # a = min(1 - 1/2, 0.99)
    w2 = (2 / 3) * w1 + (1 / 3) * seen[1][1]  # a = min(1 - 1/3, 0.99)
    torch.testing.assert_close(teacher.model.head.conv.weight, w2)


class _OneClassCorner(torch.utils.data.Dataset):
    """A 40 x 40 label with class 1 in one 10 x 10 corner; items crop 20 x 20 at random."""

    def __len__(self):
        return 1

    def __getitem__(self, i):
        label = torch.zeros(40, 40, dtype=torch.long)
        label[:10, :10] = 1
        img, lab = RandomScaleCrop((20, 20))(torch.zeros(3, 40, 40), label)
        return {"image": img, "label": lab}


def test_rare_class_sampling_redraws_crops_until_they_hold_the_class():
    """DAFormer: the first draw, then up to 10 re-draws while the crop holds no more than the threshold (``>``),
    each re-draw with a seed of its own."""
    items = SeededItems(_OneClassCorner(), min_class_pixels=20)
    count = lambda lab: int((lab == 1).sum())  # noqa: E731
    for s in range(40):
        draws = [items[(0, s)]["label"]] + [items[(0, redraw_seed(s, j))]["label"] for j in range(1, 11)]
        first = next((j for j, lab in enumerate(draws) if count(lab) > 20), 10)
        assert torch.equal(items[(0, s, 1)]["label"], draws[first])
    assert sum(count(items[(0, s)]["label"]) > 20 for s in range(40)) < 12  # a plain crop rarely holds it
    assert sum(count(items[(0, s, 1)]["label"]) > 20 for s in range(40)) >= 28
    seeds = [redraw_seed(5, j) for j in range(1, 11)]
    assert len(set(seeds)) == 10 and not set(seeds) & set(range(0, 100))  # no other position's sample seed


# Raw id -> train id, written out from Cityscapes' labels.py (GTA5 uses the same ids) and from SYNTHIA's
# RAND-CITYSCAPES README as AdaptSegNet/ADVENT map them; everything else is ignored.
CITYSCAPES_TABLE = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_16_TABLE = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 23: 9, 24: 10, 25: 11, 26: 12,
                       28: 13, 32: 14, 33: 15}
SYNTHIA_19_TABLE = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
                    18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
SYNTHIA_16_TABLE = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11, 8: 12, 19: 13,
                    12: 14, 11: 15}


@pytest.mark.parametrize("mapping,table,size", [(CITYSCAPES_19, CITYSCAPES_TABLE, 34),
                                                (CITYSCAPES_16, CITYSCAPES_16_TABLE, 34),
                                                (SYNTHIA_19, SYNTHIA_19_TABLE, 23), (SYNTHIA_16, SYNTHIA_16_TABLE, 23)])
def test_label_id_tables_entry_by_entry(mapping, table, size):
    assert mapping == {raw: table.get(raw, IGNORE) for raw in range(size)}


def test_dropout_control_zeroes_channels_at_its_rate_and_rescales_the_rest():
    f = torch.rand(8, 256, 2, 2) + 0.5
    for rate in (0.3, 0.5):
        d = ATTACKS.build({"name": "dropout", "rate": rate}).displacement(f, torch.zeros(1), "l2")
        out = f + d
        zeroed = (out.abs().sum(dim=(2, 3)) == 0).float().mean()
        assert abs(float(zeroed) - rate) < 0.05
        kept = out.abs().sum(dim=(2, 3)) > 0
        torch.testing.assert_close(out.permute(0, 2, 3, 1)[kept[:, None, None].expand(-1, 2, 2, -1)],
                                   (f / (1 - rate)).permute(0, 2, 3, 1)[kept[:, None, None].expand(-1, 2, 2, -1)])


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    # frozen BN: batch statistics would differ between 2 x 2 and 4 images; everything else must not
    common = ["train.iters=1", "model.backbone_options={width: 8, bn: frozen}", "train.lr=0.1"]
    big = Trainer(tiny_config("source_only", *common, "data.batch_size=4"), tmp_path / "big", progress=False)
    small = Trainer(tiny_config("source_only", *common, "data.batch_size=2", "train.accumulate=2"),
                    tmp_path / "small", progress=False)
    before = big.method.segmentor.head.conv.weight.clone()
    big.fit()
    small.fit()
    a, b = big.method.segmentor.state_dict(), small.method.segmentor.state_dict()
    assert not torch.equal(a["head.conv.weight"], before)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


class _Ramp(nn.Module):
    """Logits that depend on the input size and position, so each scale gives other scores."""

    def forward(self, x):
        ramp = torch.linspace(-1, 1, x.shape[-1]).view(1, 1, 1, -1) * x.shape[-1] / 4
        return torch.cat([x[:, :1] * ramp, x[:, 1:2] - ramp], 1)


def test_multiscale_evaluation_is_the_sum_of_upsampled_softmaxes_over_scales():
    m, x = _Ramp(), torch.rand(1, 3, 8, 12)
    got = predict_logits(m, x, (8, 12), scales=(1.0, 0.5))
    half = F.interpolate(x, size=(4, 6), mode="bilinear", align_corners=False)
    up = F.interpolate(m(half), size=(8, 12), mode="bilinear", align_corners=True)
    torch.testing.assert_close(got, m(x).softmax(1) + up.softmax(1))


def test_perturbation_addon_terms_equal_perturb_and_defend_called_directly():
    import uda_perturb as up
    from uda_perturb.losses import pixel_weighted_ce, upsample
    from uda_perturb.methods import build_method

    torch.manual_seed(0)
    cfg = tiny_config("adaptsegnet", "method.options={ndf: 4}")
    method = build_method("adaptsegnet", up.engine.build_model(cfg), [{"name": "perturbation", "eps": 0.2}],
                          {"ndf": 4})
    xs, ys = torch.randn(2, 3, 32, 48), torch.randint(0, 9, (2, 32, 48))
    state = method.forward_domains({"image": xs, "label": ys}, {"image": torch.randn(2, 3, 32, 48)})
    mixed_w = torch.rand(2, 32, 48)
    state.mixed, state.mixed_labels, state.mixed_weights = state.source, ys, mixed_w  # a self-training side too
    torch.manual_seed(1)
    losses, _ = method.addons[0](method, state)
    disc, space, f = method.discriminators["main"], method.discriminator_space, method.segmentor.classifier
    torch.manual_seed(1)  # the same draws, in the add-on's order: source, target, mixed
    src = up.perturb_and_defend(state.source.features, f, labels=ys, domain="source", discriminator=disc, eps=0.2,
                                discriminator_input=space, clean_logits=state.source.logits)
    tgt = up.perturb_and_defend(state.target.features, f, domain="target", discriminator=disc, eps=0.2,
                                discriminator_input=space, clean_logits=state.target.logits,
                                output_size=state.target_size)
    mix = up.perturb_and_defend(state.mixed.features, f, labels=ys, domain="source", discriminator=disc, eps=0.2,
                                discriminator_input=space, clean_logits=state.mixed.logits, pixel_weights=mixed_w)
    torch.testing.assert_close(losses["def_source"], 1.0 * src.loss)
    torch.testing.assert_close(losses["def_target"], 0.1 * tgt.loss)
    torch.testing.assert_close(losses["def_mixed"], 1.0 * mix.loss)
    # the CE defense weighs the mixed labels' pixels: its value is the pixel-weighted CE of the perturbed logits
    torch.testing.assert_close(mix.loss, pixel_weighted_ce(upsample(mix.adv_logits, (32, 48)), ys, mixed_w))
    assert not torch.allclose(mix.loss, pixel_weighted_ce(upsample(mix.adv_logits, (32, 48)), ys,
                                                          torch.ones_like(mixed_w)))
    # the attack used the discriminator: without it, the same seed moves the features elsewhere
    torch.manual_seed(1)
    alone = up.perturb_and_defend(state.source.features, f, labels=ys, domain="source", eps=0.2,
                                  clean_logits=state.source.logits)
    assert not torch.allclose(alone.perturbed, src.perturbed)


def test_ignore_is_255_in_every_table_and_in_the_lookup():
    """The ignore index every loss and metric uses (255, literally): tables written with the module's own constant
    would follow any other value silently."""
    from uda_perturb.data.label_maps import CAMVID_11, lookup_table

    assert IGNORE == 255 and CAMVID_11[11] == 255 and CITYSCAPES_19[0] == 255 and SYNTHIA_16[0] == 255
    lut = lookup_table(CAMVID_11, 256)
    assert lut[11] == 255 and lut[3] == 3


def test_class_names_and_palettes_are_the_published_ones():
    """Cityscapes' 19 train classes with their official colours, CamVid's 11 with the SegNet tutorial's, written
    out here: per-class tables and the colour-coded predictions are read against these."""
    from uda_perturb.data import label_maps as lm

    assert lm.CITYSCAPES_CLASSES == (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
        "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
    assert lm.CITYSCAPES_PALETTE == (
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
        (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))
    assert lm.CAMVID_CLASSES == ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                                 "Car", "Pedestrian", "Bicyclist")
    assert lm.CAMVID_PALETTE == (
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
    assert lm.CAMVID_TAIL == ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")
