"""Self-training as its references train it (DACS vikolss/DACS trainUDA.py, DAFormer mmseg/models/uda/dacs.py,
MIC masking_consistency_module.py / masking_transforms.py), each default pinned by a value computed here:

- the teacher labels with BatchNorm on its input batch's statistics, dropout off, EMA over parameters only;
- it labels the target image without photometric jitter; the mixed CE has no class weights;
- mmcv's linear lr warm-up; DAFormer's ImageNet feature distance and its scale-min-ratio label pooling;
- MIC's block mask and masked-image loss against the host's pseudo-labels.
"""
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_resume_is_bit_exact, tiny_config
from torch import nn

import uda_perturb as up
from uda_perturb.config import ConfigError
from uda_perturb.data.transforms import build_transforms
from uda_perturb.engine import Trainer
from uda_perturb.engine.optim import build_optimizers, set_poly_lr, warmup_factor
from uda_perturb.losses import pixel_weighted_ce
from uda_perturb.methods import build_method
from uda_perturb.methods.base import StepState
from uda_perturb.methods.dacs import pseudo_labels
from uda_perturb.methods.feature_distance import downscale_label_ratio, masked_feature_distance
from uda_perturb.methods.mean_teacher import MeanTeacher
from uda_perturb.methods.mic import block_mask, block_size_for
from uda_perturb.mixing import strong_augment
from uda_perturb.models.backbones import Backbone
from uda_perturb.registry import BACKBONES


def _net():
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Dropout(0.5))


def test_teacher_normalises_with_its_batch_statistics_and_never_drops():
    student = _net()
    with torch.no_grad():
        student[1].running_mean.fill_(5.0)  # statistics the reference teacher must not use
    teacher = MeanTeacher(student)
    x = torch.randn(4, 2, 3, 3)
    y = teacher.model[0](x)
    mean, var = y.mean(dim=(0, 2, 3), keepdim=True), y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = (y - mean) / torch.sqrt(var + 1e-5)  # BN affine is (1, 0) at init; no dropout
    torch.testing.assert_close(teacher(x), expected)
    torch.testing.assert_close(teacher(x), teacher(x))
    teacher.train(False)  # a parent's eval() does not change what the teacher does
    torch.testing.assert_close(teacher(x), expected)


def test_teacher_ema_covers_parameters_only_and_stored_mode_copies_buffers():
    student = _net()
    batch_teacher, stored_teacher = MeanTeacher(student), MeanTeacher(student, bn="stored")
    w0 = batch_teacher.model[0].weight.clone()
    own_stats = batch_teacher.model[1].running_mean.clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
    student.train()(torch.randn(4, 2, 3, 3))
    for t in (batch_teacher, stored_teacher):
        t.update(student, step=3)  # a = min(1 - 1/4, 0.99) = 0.75
        torch.testing.assert_close(t.model[0].weight, 0.75 * w0 + 0.25 * student[0].weight)
    assert torch.equal(batch_teacher.model[1].running_mean, own_stats)
    assert torch.equal(stored_teacher.model[1].running_mean, student[1].running_mean)
    assert not stored_teacher.model.training and batch_teacher.model.training
    assert not batch_teacher.model[2].training
    with pytest.raises(ValueError, match="batch"):
        MeanTeacher(student, bn="running")


def test_unjittered_image_is_the_same_crop_and_flip_without_the_jitter():
    image, label = torch.rand(3, 20, 30), torch.randint(0, 4, (20, 30))
    kw = dict(crop=[12, 16], scale=[0.8, 1.2], flip=True, normalize="imagenet")
    torch.manual_seed(7)
    jittered, lab, extras = build_transforms(photometric=True, **kw).apply(image, label)
    torch.manual_seed(7)
    plain, plain_lab = build_transforms(photometric=False, **kw)(image, label)
    torch.testing.assert_close(extras["image_unjittered"], plain)
    assert torch.equal(lab, plain_lab) and not torch.allclose(jittered, plain)
    assert build_transforms(**kw).apply(image, label)[2] == {}


class _Recorder(nn.Module):
    """Stands in for the teacher: records its input, predicts class 1 everywhere with confidence ~1."""

    def __init__(self, k):
        super().__init__()
        self.k, self.inputs = k, []

    def forward(self, x):
        self.inputs.append(x)
        logits = torch.zeros(x.shape[0], self.k, *x.shape[-2:])
        logits[:, 1] = 20.0
        return logits


def _dacs(**options):
    cfg = tiny_config("dacs")
    method = build_method("dacs", up.engine.build_model(cfg), [], options)
    method.set_class_weights(torch.arange(1.0, method.num_classes + 1.0))
    return method


@pytest.mark.parametrize("jittered", [False, True])
def test_dacs_teacher_labels_the_unjittered_target_image(jittered):
    method = _dacs(teacher_jittered_input=jittered)
    method.teacher = _Recorder(method.num_classes)
    xs, xt, clean = torch.randn(2, 3, 32, 48), torch.randn(2, 3, 32, 48), torch.randn(2, 3, 32, 48)
    ys = torch.randint(0, method.num_classes, (2, 32, 48))
    state = method.forward_domains({"image": xs, "label": ys}, {"image": xt, "image_unjittered": clean})
    assert method.teacher.inputs[0] is (xt if jittered else clean)
    assert state.teacher_image is method.teacher.inputs[0]
    assert torch.equal(state.pseudo_labels, torch.ones(2, 32, 48, dtype=torch.long))


def test_dacs_mixed_loss_has_no_class_weights_unless_asked():
    torch.manual_seed(0)
    method = _dacs()
    xs, ys = torch.randn(2, 3, 32, 48), torch.randint(0, method.num_classes, (2, 32, 48))
    state = method.forward_domains({"image": xs, "label": ys}, {"image": torch.randn(2, 3, 32, 48)})
    logp = F.log_softmax(F.interpolate(state.mixed.logits, size=(32, 48), mode="bilinear", align_corners=True), 1)
    ce = -logp.gather(1, state.mixed_labels[:, None])[:, 0]
    w = state.mixed_weights
    torch.testing.assert_close(method.generator_losses(state)["mix"], (w * ce).mean())
    method.mix_class_weights = True  # the option: normalised by the weights' sum, as the source CE
    cw = method.class_weights[state.mixed_labels]
    torch.testing.assert_close(method.generator_losses(state)["mix"], (w * cw * ce).sum() / cw.sum())


def test_class_weighted_pixel_ce_is_normalised_by_the_weights_sum():
    logits, labels = torch.randn(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 255]]])
    w = torch.tensor([[[1.0, 0.5], [0.25, 1.0]]])
    logp = logits.log_softmax(1)[0]
    cw = torch.tensor([2.0, 1.0, 4.0])
    expected = -(2.0 * logp[0, 0, 0] + 0.5 * logp[1, 0, 1] + 4.0 * 0.25 * logp[2, 1, 0]) / (2.0 + 1.0 + 4.0)
    torch.testing.assert_close(pixel_weighted_ce(logits, labels, w, weight=cw), expected)
    torch.testing.assert_close(pixel_weighted_ce(logits, torch.full_like(labels, 255), w, weight=cw),
                               torch.tensor(0.0))


def test_pseudo_label_weight_at_the_threshold_and_per_batch():
    # image 0: confidences 0.968 (counts: >=), 0.5; image 1: 0.99, 0.2 -> 2 of 4 in the batch
    conf = torch.tensor([[0.968, 0.5], [0.99, 0.2]])
    logits = torch.stack([torch.log(conf), torch.log(1 - conf)], dim=1).view(2, 2, 1, 2)
    labels, weight = pseudo_labels(logits, 0.968)
    assert labels.tolist() == [[[0, 0]], [[0, 1]]]
    torch.testing.assert_close(weight, torch.full((2, 1, 2), 0.5))


def test_linear_warmup_is_mmcvs_formula_on_top_of_poly():
    assert warmup_factor(0, 1500, 1e-6) == pytest.approx(1e-6)
    assert warmup_factor(750, 1500, 1e-6) == pytest.approx(1 - 0.5 * (1 - 1e-6))
    assert warmup_factor(1500, 1500, 1e-6) == 1.0 and warmup_factor(3, 0, 1e-6) == 1.0
    cfg = tiny_config("source_only", "train.iters=100", "train.warmup_iters=10", "train.lr=0.01",
                      "train.poly_power=1.0")
    opts = build_optimizers(_dacs(), cfg.train)
    lr = set_poly_lr(opts, 4, cfg.train)
    assert lr == pytest.approx(0.01 * (1 - 4 / 100) * (1 - (1 - 4 / 10) * (1 - 1e-6)))
    assert opts["segmentor"].param_groups[1]["lr"] == pytest.approx(cfg.train.head_lr_mult * lr)
    with pytest.raises(ConfigError, match="warmup"):
        tiny_config("source_only", "train.warmup_iters=-1")


def test_downscale_label_ratio_keeps_majorities_above_the_ratio():
    lab = torch.tensor([[[1, 1, 2, 2],
                         [1, 1, 2, 3],
                         [255, 255, 0, 0],
                         [255, 4, 0, 0]]])
    out = downscale_label_ratio(lab, 2, 0.75, num_classes=5)
    # blocks: all 1 -> 1; 2,2,2,3 -> 2 (share 0.75); three ignored -> ignore; all 0 -> 0
    assert out.tolist() == [[[1, 2], [255, 0]]]
    assert downscale_label_ratio(lab, 2, 0.8, num_classes=5).tolist() == [[[1, 255], [255, 0]]]


def test_masked_feature_distance_is_the_mean_l2_over_selected_positions():
    a, b = torch.zeros(1, 2, 1, 3), torch.tensor([[[[3.0, 0.0, 1.0]], [[4.0, 1.0, 0.0]]]])
    mask = torch.tensor([[[True, False, True]]])
    torch.testing.assert_close(masked_feature_distance(a, b, mask), torch.tensor(3.0))  # (5 + 1) / 2
    torch.testing.assert_close(masked_feature_distance(a, b), torch.tensor(7.0 / 3))
    assert masked_feature_distance(a, b, torch.zeros_like(mask)).item() == 0.0


class _Pretrained(Backbone):
    """A backbone whose 'pretrained weights' are fixed by a seed, as a weight file would fix them."""

    out_channels, aux_channels, output_stride = 4, 4, 2
    input_normalization = "imagenet"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()

    def forward(self, x):
        f = self.conv(x)
        return {"aux": f, "out": f}


@pytest.fixture
def pretrained_backbone():
    BACKBONES.register("test_pretrained", _Pretrained)
    yield "test_pretrained"
    BACKBONES.unregister("test_pretrained")


def test_imnet_fd_pulls_source_features_to_the_frozen_pretrained_copy(pretrained_backbone):
    seg = up.build_segmentor("conv1x1", backbone=pretrained_backbone, num_classes=3)
    with torch.no_grad():
        seg.backbone.conv.weight.add_(0.5)  # the warm start moved away from the pretrained weights
    method = build_method("source_only", seg, [{"name": "imnet_fd", "classes": [2], "scale_min_ratio": 0.75}])
    x = torch.randn(2, 3, 4, 4)
    y = torch.tensor([[[2, 2, 0, 0], [2, 2, 0, 0], [1, 1, 2, 2], [1, 1, 2, 2]]] * 2)
    state = method.forward_domains({"image": x, "label": y}, None)
    state.source_batch = {"image": x, "label": y}
    rng = torch.get_rng_state()
    losses, _ = method.addons[0](method, state)
    assert torch.equal(torch.get_rng_state(), rng)  # building the frozen copy draws nothing from the run's RNG
    frozen = _Pretrained().conv(x)
    dist = (seg.backbone.conv(x) - frozen).norm(dim=1)  # B x 2 x 2; class-2 blocks: (0, 0) and (1, 1)
    expected = 0.005 * torch.stack([dist[:, 0, 0], dist[:, 1, 1]]).mean()
    torch.testing.assert_close(losses["imnet_fd"], expected)
    losses["imnet_fd"].backward()
    assert seg.backbone.conv.weight.grad is not None
    assert "addons.0" not in " ".join(method.state_dict())  # the frozen copy is not saved


def test_imnet_fd_refuses_backbones_without_pretrained_weights():
    with pytest.raises(ConfigError, match="pretrained"):
        Trainer(tiny_config("source_only", "method.addons=[imnet_fd]"), "unused", progress=False)


def test_mic_block_size_and_mask():
    # MIC: 32 px at 512-px crops, 64 px at its 1024-px high-resolution crops
    assert block_size_for(512, 512) == 32 and block_size_for(1024, 1024) == 64
    assert block_size_for(120, 160) == 8 and block_size_for(180, 240) == 11
    m = block_mask(4, 120, 160, 8, 0.7)
    assert m.shape == (4, 1, 120, 160) and set(m.unique().tolist()) <= {0.0, 1.0}
    blocks = m.view(4, 1, 15, 8, 20, 8)
    assert torch.equal(blocks.amin(dim=(3, 5)), blocks.amax(dim=(3, 5)))  # constant on each block
    assert abs(float(m.mean()) - 0.3) < 0.05  # kept share 1 - ratio


def test_mic_loss_is_the_students_pixel_ce_on_the_masked_teacher_image():
    torch.manual_seed(0)
    method = _dacs()
    mic = up.methods.build_method("dacs", method.segmentor, ["mic"]).addons[0]
    k = method.num_classes
    img = torch.randn(2, 3, 32, 48)
    state = StepState(method.segmentor.forward_all(img), torch.zeros(2, 32, 48, dtype=torch.long), (32, 48))
    state.teacher_image = img
    state.pseudo_labels = torch.randint(0, k, (2, 32, 48))
    state.pseudo_weights = torch.full((2, 32, 48), 0.4)
    torch.manual_seed(5)
    losses, _ = mic(method, state)
    torch.manual_seed(5)  # replay: strong augmentation, then the mask (32 px at 512 -> 2 px at 32 x 48)
    x = strong_augment(img, method.input_normalization, 0.2, 0.2, blur=True)
    keep = (torch.rand(2, 1, 16, 24) > 0.7).float()
    x = x * keep.repeat_interleave(2, 2).repeat_interleave(2, 3)
    logits = F.interpolate(method.segmentor.classify(method.segmentor.features(x)), size=(32, 48),
                           mode="bilinear", align_corners=True)
    ce = F.cross_entropy(logits, state.pseudo_labels, reduction="none")
    torch.testing.assert_close(losses["mic"], (0.4 * ce).mean())


def test_mic_needs_a_teacher():
    with pytest.raises(ConfigError, match="EMA teacher"):
        Trainer(tiny_config("adaptsegnet", "method.options={ndf: 4}", "method.addons=[mic]"), "unused",
                progress=False)


def test_dacs_with_mic_and_perturbation_trains_and_resumes_bit_exactly(tmp_path):
    extra = ["train.iters=4", "method.addons=[mic, perturbation]", "data.target.transforms.photometric=true",
             "train.warmup_iters=2"]
    assert_resume_is_bit_exact(tmp_path, "dacs", extra)
    log = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert '"g/mic"' in log and '"g/def_mixed"' in log and '"g/mix"' in log


def test_dacs_refuses_unknown_teacher_bn_mode():
    with pytest.raises(ValueError, match="teacher BatchNorm"):
        _dacs(teacher_bn="running")


class DropPath(nn.Module):  # stands in for timm's DropPath, which the teacher recognises by name
    def forward(self, x):
        return x * (torch.rand(x.shape[0], 1, 1, 1) > 0.5) * 2 if self.training else x


def test_teacher_alpha_range_droppath_off_and_no_graph():
    student = nn.Sequential(nn.Conv2d(2, 2, 1), DropPath())
    MeanTeacher(student, alpha=0.0)  # [0, 1): 0 is a valid EMA factor
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"EMA alpha must be in \[0, 1\)"):
            MeanTeacher(student, alpha=bad)
    with pytest.raises(ValueError, match="teacher BatchNorm mode must be one of"):
        MeanTeacher(student, bn="eval")
    teacher = MeanTeacher(student)
    assert not teacher.model[1].training and teacher.model[0].training
    x = torch.randn(4, 2, 3, 3, requires_grad=True)
    out = teacher(x)
    torch.testing.assert_close(out, teacher.model[0](x).detach())  # DropPath off: no sample dropped
    assert not out.requires_grad  # the teacher never builds a graph


def test_mic_blocks_are_at_least_one_pixel_and_one_grid_cell_per_axis():
    """A tiny input still gets a 1-px block, and an image shorter than a block one grid row (or column): the
    mask is then constant along that axis."""
    assert block_size_for(4, 4) == 1 and block_size_for(24, 40) == 2  # 32 * 24 / 512 = 1.5 rounds to 2
    g = torch.Generator().manual_seed(0)
    wide = block_mask(8, 3, 40, 15, 0.5, generator=g)  # round(3 / 15) = 0 rows -> 1
    tall = block_mask(8, 40, 3, 15, 0.5, generator=g)
    assert wide.shape == (8, 1, 3, 40) and tall.shape == (8, 1, 40, 3)
    assert torch.equal(wide, wide[:, :, :1].expand_as(wide)) and torch.equal(tall, tall[..., :1].expand_as(tall))
    assert 0 < wide.mean() < 1 and 0 < tall.mean() < 1
