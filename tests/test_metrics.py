import json

import numpy as np
import pytest
import torch

from uda_perturb.metrics import ConfusionMatrix, subset_indices


def reference_iou(pred, gt, k):
    """IoU per class written out with sets of pixels; NaN where a class is in neither map."""
    out = []
    valid = gt != 255
    for c in range(k):
        p, g = (pred == c) & valid, (gt == c) & valid
        union = (p | g).sum()
        out.append(np.nan if union == 0 else (p & g).sum() / union)
    return np.array(out)


def test_iou_matches_independent_computation_over_batches():
    rng = np.random.default_rng(0)
    k = 6
    cm = ConfusionMatrix(k)
    preds, gts = [], []
    for _ in range(3):
        gt = rng.integers(0, 4, (2, 7, 9))  # classes 4 and 5 never in ground truth
        gt[rng.random(gt.shape) < 0.2] = 255
        pred = rng.integers(0, 5, (2, 7, 9))  # class 5 never predicted -> absent from both
        cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
        preds.append(pred)
        gts.append(gt)
    ref = reference_iou(np.concatenate(preds), np.concatenate(gts), k)
    np.testing.assert_allclose(cm.iou(), ref, equal_nan=True)
    assert np.isnan(cm.iou()[5]) and cm.iou()[4] == 0.0
    assert cm.miou() == pytest.approx(np.nanmean(ref))
    assert cm.miou([0, 1]) == pytest.approx(np.mean(ref[:2]))
    valid = np.concatenate(gts) != 255
    assert cm.pixel_accuracy() == pytest.approx((np.concatenate(preds) == np.concatenate(gts))[valid].mean())


def test_errors_and_reports():
    cm = ConfusionMatrix(3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.full((2, 2), 7), torch.zeros(2, 2))
    cm.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [255, 2]]))
    d = cm.as_dict({"ab": [0, 1]})
    assert d["iou"] == {"a": 100.0, "b": 50.0, "c": 0.0} and d["miou_ab"] == 75.0
    assert "| a | b | c | mIoU |" in cm.to_markdown()
    assert subset_indices(["a", "b", "c"], ["c", "a"]) == [2, 0]
    with pytest.raises(KeyError):
        subset_indices(["a"], ["z"])


def test_entropy_meter_is_the_pixel_mean_of_normalised_entropy():
    import math

    from uda_perturb.metrics import EntropyMeter

    m = EntropyMeter()
    assert m.mean() != m.mean()  # NaN before data
    uniform = torch.full((1, 4, 1, 2), 0.25)                  # entropy 1 at both pixels
    onehot = torch.zeros(1, 4, 1, 2)
    onehot[:, 0] = 1.0                                         # entropy 0 at both pixels
    half = torch.tensor([0.5, 0.5, 0.0, 0.0]).view(1, 4, 1, 1)  # log 2 / log 4 = 0.5
    running = []
    for p in (half, uniform, onehot):  # the running mean differs at every step: updates add up
        m.update(p)
        running.append(m.mean())
    np.testing.assert_allclose(running, [0.5, (0.5 + 2) / 3, (0.5 + 2 + 0) / 5], rtol=1e-9)
    assert math.isclose(m.mean(), (1 + 1 + 0 + 0 + 0.5) / 5, rel_tol=1e-9)


def test_reports_by_value():
    cm = ConfusionMatrix(4, ["a", "b", "c", "d"])
    cm.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [255, 2]]))  # d in neither map
    assert cm.as_dict({"ab": [0, 1]}) == {"iou": {"a": 100.0, "b": 50.0, "c": 0.0, "d": None}, "miou": 50.0,
                                          "pixel_accuracy": 66.67, "miou_ab": 75.0}
    table = "| a | b | c | d | mIoU |\n|---|---|---|---|---|\n| 100.0 | 50.0 | 0.0 | - | 50.0 |"
    assert cm.to_markdown() == table
    assert cm.to_markdown("day test") == "**day test**\n\n" + table
    assert cm.to_json() == json.dumps(cm.as_dict(), indent=2)


def test_label_and_prediction_ranges_are_exact():
    cm = ConfusionMatrix(3)
    cm.update(torch.zeros(2, 2), torch.full((2, 2), 3))  # label 3 of 3 classes: not a class, not counted
    assert int(cm.hist.sum()) == 0
    assert np.isnan(cm.miou()) and np.isnan(cm.pixel_accuracy())  # no data: NaN, not an error
    with pytest.raises(ValueError, match=r"^predictions hold class ids outside \[0, 3\)$"):
        cm.update(torch.tensor([3]), torch.tensor([0]))  # prediction 3 of 3 classes
    with pytest.raises(ValueError, match=r"^predictions hold class ids outside \[0, 3\)$"):
        cm.update(torch.tensor([-1]), torch.tensor([0]))
    one = ConfusionMatrix(1)  # one class is a valid (if degenerate) problem
    one.update(torch.zeros(3), torch.zeros(3))
    assert one.miou() == 1.0


def test_error_messages_in_full():
    with pytest.raises(ValueError, match=r"^num_classes must be positive, got 0$"):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match=r"^2 class names for 3 classes$"):
        ConfusionMatrix(3, ["a", "b"])
    with pytest.raises(ValueError, match=r"^prediction \(2, 2\) and label \(2, 3\) differ in shape$"):
        ConfusionMatrix(3).update(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(KeyError) as err:
        subset_indices(["a"], ["z"])
    assert err.value.args[0] == "classes ['z'] are not among ['a']"


def test_sums_over_a_gloo_group_on_cpu(tmp_path):
    import torch.distributed as dist

    from uda_perturb.metrics import EntropyMeter

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cm = ConfusionMatrix(2)
        cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
        cm.all_reduce()
        assert cm.hist.device.type == "cpu" and cm.hist.tolist() == [[1, 1], [0, 1]]
        m = EntropyMeter()
        m.update(torch.full((1, 2, 1, 1), 0.5))
        m.all_reduce()
        assert m.total.tolist() == [1.0, 1.0]
    finally:
        dist.destroy_process_group()
