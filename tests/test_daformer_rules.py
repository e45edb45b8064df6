"""DAFormer's rules outside the DACS step: AdamW without decay on normalisation parameters, rare-class sampling's
crop re-draws as the training stream applies them, and imnet_fd's frozen copy holding the ImageNet weights by
whichever route they came."""
import pytest
import torch
from helpers import tiny_config
from torch import nn

import uda_perturb as up
from uda_perturb.config import RareClassSamplingConfig, TransformConfig
from uda_perturb.data.rare_class_sampling import DAFORMER_TRAINING_SCALE, crop_thresholds, image_thresholds
from uda_perturb.data.transforms import RandomScaleCrop
from uda_perturb.engine.distributed import DistInfo
from uda_perturb.engine.loaders import stream
from uda_perturb.engine.optim import build_optimizers
from uda_perturb.errors import ConfigError, DataError
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


class _Few(torch.utils.data.Dataset):
    """Four 40 x 40 labels (1,600 pixels, 0.08% of a GTA5 label) holding 0, 5, 20 and 200 pixels of class 1; each
    image is filled with its index, so a batch says which image it is."""

    ones = (0, 5, 20, 200)

    def __len__(self):
        return 4

    def read_label(self, i):
        label = torch.zeros(40, 40, dtype=torch.long)
        label.view(-1)[:self.ones[i]] = 1
        return label

    def __getitem__(self, i):
        return {"image": torch.full((3, 40, 40), float(i)), "label": self.read_label(i)}


def test_rare_class_sampling_counts_min_pixels_at_each_images_label_scale():
    # 10,000 GTA5-label pixels are 7.9 pixels of a 40 x 40 label: images 2 and 3 hold class 1 enough, image 1 not
    assert image_thresholds([1600], 10_000)[0] == pytest.approx(10_000 * 1600 / (1914 * 1052))
    assert image_thresholds([1914 * 1052], 3000)[0] == pytest.approx(3000)  # DAFormer's own count on GTA5
    rcs = RareClassSamplingConfig(temperature=0.01, min_pixels=10_000)
    it = stream(_Few(), 1, 0, 0, DistInfo(), rare_class_sampling=rcs, num_classes=2)
    drawn = [int(next(it)["image"][0, 0, 0, 0]) for _ in range(40)]
    assert set(drawn) <= {0, 1, 2, 3} and {2, 3} <= set(drawn)  # class 1 (rare: most draws) from images 2 and 3
    assert sum(i in (2, 3) for i in drawn) > 30
    # counted as is (DAFormer's SYNTHIA config), no image here holds 10,000 pixels of anything
    as_is = RareClassSamplingConfig(temperature=0.01, min_pixels=10_000, min_pixels_scale="none")
    with pytest.raises(DataError, match="no image holds more than 10000 pixels of any class; lower "
                                        "data.rare_class_sampling.min_pixels"):
        next(stream(_Few(), 1, 0, 0, DistInfo(), rare_class_sampling=as_is, num_classes=2))
    with pytest.raises(ConfigError, match="min_pixels_scale' must be label_area or none, got 'area'"):
        tiny_config("source_only", "data.rare_class_sampling={min_pixels_scale: area}")


def test_cat_max_ratio_redraws_a_crop_that_one_class_fills_as_daformers_source_crop():
    label = torch.zeros(40, 40, dtype=torch.long)
    label[30:, 30:] = 1  # class 1 in one corner: most 20 x 20 crops hold class 0 alone
    label[:5, :] = 255
    crop = RandomScaleCrop((20, 20), (1.0, 1.0), cat_max_ratio=0.75)
    for seed in range(20):
        torch.manual_seed(seed)
        _, got = crop(torch.zeros(3, 40, 40), label)
        # the rule written out: the scale draw, then windows until one passes (11 draws at most)
        torch.manual_seed(seed)
        torch.rand(())
        for _ in range(11):
            y, x = int(torch.randint(0, 21, ())), int(torch.randint(0, 21, ()))
            window = label[y:y + 20, x:x + 20]
            _, counts = window[window != 255].unique(return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < 0.75:
                break
        assert torch.equal(got, window)
    # off by default; the recipe key reaches the source crop
    assert RandomScaleCrop((20, 20)).cat_max_ratio is None
    cfg = tiny_config("source_only", "data.source.transforms.crop=[16, 16]",
                      "data.source.transforms.cat_max_ratio=0.75")
    built = up.engine.loaders.build_dataset(cfg.data.source, train=True)
    assert [t.cat_max_ratio for t in built.transform.transforms if isinstance(t, RandomScaleCrop)] == [0.75]


def test_rare_class_sampling_defaults_and_edges_are_daformers():
    import inspect

    import numpy as np

    from uda_perturb.data.rare_class_sampling import RareClassSampler, class_probabilities

    defaults = {k: p.default for k, p in inspect.signature(RareClassSampler.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"start": 0, "rank": 0, "world_size": 1, "temperature": 0.01, "min_pixels": 3000}
    assert inspect.signature(class_probabilities).parameters["temperature"].default == 0.01
    # a class holding a single pixel is a class; probabilities stay finite at a low temperature
    classes, p = class_probabilities([1, 0, 999_999], temperature=0.001)
    assert classes.tolist() == [0, 2] and np.isfinite(p).all() and p[0] > 0.99
    # an image must hold MORE than the threshold (DAFormer: pixels > rcs_min_pixels)
    counts = np.array([[100, 50], [100, 51]])
    sampler = RareClassSampler(counts, seed=0, min_pixels=50)
    assert sampler.images_with[1].tolist() == [1]
    # rank 0 of 1 by default: every stream position in turn
    first = [i for i, _ in zip(iter(RareClassSampler(counts, seed=0, min_pixels=50)), range(3))]
    alone = [i for i, _ in zip(iter(RareClassSampler(counts, seed=0, min_pixels=50, rank=0, world_size=1)), range(3))]
    assert first == alone
    # a label of area 1 still scales by 1 (no smaller area than one pixel is assumed)
    assert crop_thresholds([1], [1, 1], 100, 0.5)[0] == pytest.approx(50 / DAFORMER_TRAINING_SCALE)


def test_rare_class_sampling_errors_in_full():
    from helpers import raises_exactly

    from uda_perturb.data.rare_class_sampling import class_probabilities

    with raises_exactly(DataError, "rare-class sampling temperature must be positive, got 0"):
        class_probabilities([1, 2], temperature=0)
    with raises_exactly(DataError, "rare-class sampling needs labelled source pixels"):
        class_probabilities([0, 0])
    with raises_exactly(DataError, "rare-class sampling min_pixels_scale must be one of ('label_area', 'none'), got "
                                   "'area'"):
        image_thresholds([10], 5, "area")


def test_rare_class_sampling_names_the_classes_it_cannot_draw_and_ranks_split_the_stream():
    import numpy as np

    from uda_perturb.data.rare_class_sampling import RareClassSampler

    counts = np.array([[100, 10, 60], [100, 20, 70]])  # class 1 never exceeds 50 pixels: it cannot be drawn
    sampler = RareClassSampler(counts, seed=4, min_pixels=50)
    assert sampler.dropped == [1] and sorted(int(c) for c in sampler.classes) == [0, 2]
    one = [key for key, _ in zip(iter(RareClassSampler(counts, seed=4, min_pixels=50)), range(8))]
    for rank in (0, 1):  # rank r of 2 takes stream positions r, r + 2, ...
        mine = [key for key, _ in zip(iter(RareClassSampler(counts, seed=4, min_pixels=50, rank=rank, world_size=2)),
                                      range(4))]
        assert mine == one[rank::2]


def test_rare_class_draws_at_a_huge_seed_follow_the_modulo_2_63_rule():
    """Each draw's generator is seeded with (seed * 1_000_003 + position) mod 2**63, + 7: pinned here at a seed
    where that value and its modulo-3**63 variant differ in the low 32 bits the generator reads."""
    import numpy as np

    from uda_perturb.data.rare_class_sampling import RareClassSampler

    counts = np.array([[5000, 0, 10], [4000, 4000, 0], [100, 0, 3500], [6000, 0, 2999], [0, 3200, 3300]])
    seed = 3**63 // 1_000_003 + 12345  # above 3**63 / 1_000_003 the two moduli leave different low bits
    x = seed * 1_000_003
    assert (x % 2**63) % 2**32 != (x % 3**63) % 2**32
    sampler = RareClassSampler(counts, seed=seed, temperature=0.5, min_pixels=3000)
    got = [d for d, _ in zip(iter(sampler), range(6))]
    want = []
    for pos in range(6):
        g = torch.Generator().manual_seed((x + pos) % 2**63 + 7)
        c = int(sampler.classes[int(torch.multinomial(sampler.probs, 1, generator=g))])
        pool = sampler.images_with[c]
        want.append((int(pool[int(torch.randint(len(pool), (), generator=g))]), (x + pos) % 2**63, c))
    assert got == want


def test_dacs_source_ce_divides_by_every_pixel_only_when_asked_as_daformers_mmseg():
    torch.manual_seed(0)
    seg = up.build_segmentor("daformer", backbone="mit_b0", num_classes=4).eval()  # eval: dropout off
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (2, 32, 48), generator=g)
    labels[:, :10] = 255  # 10 of 32 rows ignored
    state = build_method("source_only", seg).forward_domains({"image": torch.randn(2, 3, 32, 48, generator=g),
                                                       "label": labels}, None)
    logits = torch.nn.functional.interpolate(state.source.logits, size=(32, 48), mode="bilinear", align_corners=False)
    ce = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    valid = labels != 255
    dacs, daformer = build_method("dacs", seg), build_method("dacs", seg, [], {"source_ce_mean": "all"})
    torch.testing.assert_close(dacs.segmentation_loss(state)["seg"], ce[valid].mean())  # DACS: labelled pixels
    torch.testing.assert_close(daformer.segmentation_loss(state)["seg"], ce[valid].sum() / labels.numel())
    daformer.set_class_weights(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # our option keeps the weighted mean either way
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])[labels.clamp(max=3)] * valid
    torch.testing.assert_close(daformer.segmentation_loss(state)["seg"], (ce * w).sum() / w.sum())
    with pytest.raises(ValueError, match=r"source_ce_mean must be one of \('valid', 'all'\), got 'pixels'"):
        build_method("dacs", seg, [], {"source_ce_mean": "pixels"})
