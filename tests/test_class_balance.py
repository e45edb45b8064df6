"""Median-frequency class weights and the weighted source CE."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

from uda_perturb.class_balance import label_statistics, median_frequency_weights, resolve_class_weights
from uda_perturb.config import ConfigError
from uda_perturb.losses import seg_ce


class _Labels(torch.utils.data.Dataset):
    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"label": self.labels[i]}


def _toy():
    # image 0 (4 px): class 0 x3, class 1 x1; image 1 (4 px): class 0 x1, class 2 x2, ignore x1
    return _Labels([torch.tensor([[0, 0], [0, 1]]), torch.tensor([[0, 2], [2, 255]])])


def test_label_statistics_counts_pixels_and_images_containing_each_class():
    counts, present = label_statistics(_toy(), 4)
    assert counts.tolist() == [4, 1, 2, 0]
    # pixels (ignore excluded) of the images in which each class appears
    assert present.tolist() == [7, 4, 3, 0]


def test_median_frequency_matches_the_formula_and_zeroes_unseen_classes():
    counts, present = label_statistics(_toy(), 4)
    w = median_frequency_weights(counts, present)
    f = [4 / 7, 1 / 4, 2 / 3]
    med = sorted(f)[1]
    assert np.allclose(w[:3], [med / x for x in f])
    assert w[3] == 0.0


def test_resolve_class_weights_validates_explicit_lists_and_names():
    assert resolve_class_weights(None, _toy(), 4) is None
    assert resolve_class_weights([1, 2, 0, 1], _toy(), 4).tolist() == [1.0, 2.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="4 classes"):
        resolve_class_weights([1.0, 2.0], _toy(), 4)
    with pytest.raises(ValueError, match="non-negative"):
        resolve_class_weights([1.0, -1.0, 1.0, 1.0], _toy(), 4)
    with pytest.raises(ValueError, match="median_frequency"):
        resolve_class_weights("inverse", _toy(), 4)
    with pytest.raises(ValueError, match=">= num_classes"):
        resolve_class_weights("median_frequency", _toy(), 2)


def test_config_rejects_an_unknown_scheme_with_a_hint():
    with pytest.raises(ConfigError, match="did you mean 'median_frequency'"):
        tiny_config("source_only", "train.class_weights=median_frequncy")
    assert tiny_config("source_only", "train.class_weights=[1, 2, 3]").train.class_weights == [1.0, 2.0, 3.0]


def test_weighted_seg_ce_is_the_weighted_mean_over_valid_pixels():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2)
    labels = torch.tensor([[[0, 1], [2, 255]]])
    w = torch.tensor([0.5, 2.0, 1.0])
    logp = torch.log_softmax(logits, 1)[0]
    pix = [((0, 0), 0), ((0, 1), 1), ((1, 0), 2)]
    num = sum(-w[c] * logp[c, i, j] for (i, j), c in pix)
    den = sum(w[c] for _, c in pix)
    assert math.isclose(float(seg_ce(logits, labels, weight=w)), float(num / den), rel_tol=1e-6)


def test_method_segmentation_loss_uses_the_weights_and_trainer_records_them(tmp_path):
    from uda_perturb.engine import Trainer

    cfg = tiny_config("source_only", "train.iters=1", "train.class_weights=median_frequency")
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    w = trainer.method.class_weights
    assert w is not None and w.shape == (cfg.model.num_classes,) and float(w.max()) > 0
    assert (tmp_path / "run" / "class_weights.json").is_file()
    assert "class_weights" not in trainer.method.state_dict()  # recreated from the config, not checkpointed
    batch = trainer.source[0]
    x, y = batch["image"][None], batch["label"][None]
    state = trainer.method.forward_domains({"image": x, "label": y}, None)
    expected = F.cross_entropy(F.interpolate(state.source.logits, size=y.shape[-2:], mode="bilinear",
                                             align_corners=True), y, weight=w, ignore_index=255)
    assert torch.allclose(trainer.method.segmentation_loss(state)["seg"], expected)
    with pytest.raises(ValueError, match="vector of"):
        trainer.method.set_class_weights(torch.ones(2))
    trainer.close()


def test_apoda_source_defense_keeps_the_class_balance_of_the_seg_loss():
    from uda_perturb.engine import build_model
    from uda_perturb.methods import build_method

    cfg = tiny_config("apoda")
    torch.manual_seed(0)
    method = build_method("apoda", build_model(cfg), [], {"ndf": 4, "perturbation": {"lambda_target": 0.0}})
    w = torch.linspace(0.2, 3.0, cfg.model.num_classes)
    method.set_class_weights(w)
    x, xt = torch.randn(2, 3, 32, 48), torch.randn(2, 3, 32, 48)
    y = torch.randint(0, cfg.model.num_classes, (2, 32, 48))
    state = method.forward_domains({"image": x, "label": y}, {"image": xt})  # target side disabled
    addon = method.addons[0]
    losses, _ = addon(method, state)
    expected = addon.lambda_source * seg_ce(addon._adv_logits["source"], y, weight=w)
    assert torch.allclose(losses["def_source"].detach(), expected, rtol=1e-5)


def test_label_counts_of_items_without_read_label_draw_nothing_from_the_run_rng():
    from uda_perturb.class_balance import per_image_class_pixels

    class Items(torch.utils.data.Dataset):  # labels only through items, whose transforms draw from torch's RNG
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"label": torch.full((2, 2), int(torch.randint(0, 1, ())) + i)}

    state = torch.get_rng_state()
    counts = per_image_class_pixels(Items(), 3)
    assert torch.equal(torch.get_rng_state(), state)
    assert counts.tolist() == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
