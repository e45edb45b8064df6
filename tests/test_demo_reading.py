"""The demo's reading names a difference as a finding only beyond twice its spread over the seeds, paired seed by
seed, and says when one seed measures no spread."""
import math

from uda_perturb.demo import differences_table, reading, spread


def seeds(dusk, day):
    """Per seed, rows whose mIoU on dusk / day is given per row."""
    out = {}
    for i, (d, y) in enumerate(zip(dusk, day)):
        rows = {}
        for row in ("warm_start", "source_only", "bn_control", "apoda"):
            rows[row] = {"target_test": {"miou": d[row], "iou": {}}, "source_test": {"miou": y[row], "iou": {}}}
        out[i] = rows
    return out


def row(so, bn, ap):
    return {"warm_start": so, "source_only": so, "bn_control": bn, "apoda": ap}


def test_a_difference_beyond_twice_its_spread_is_a_finding_and_one_inside_is_not():
    # APODA - source-only on dusk: +3, +4, +5 (mean 4, std 1: a finding); BN control: +1, -1, +3 (mean 1, std 2)
    dusk = [row(10, 11, 13), row(10, 9, 14), row(10, 13, 15)]
    day = [row(50, 50, 50), row(50, 50, 50), row(50, 50, 50)]
    text = reading(seeds(dusk, day))
    found, within = text.split("Within the spread")
    assert "apoda - source_only on dusk +4.0 ± 1.0" in found
    assert "bn_control - source_only on dusk +1.0 ± 2.0" in within
    assert "apoda - bn_control on dusk +3.0 ± 1.7" in within  # +2, +5, +2: 3.0 < 2 x 1.73
    assert "apoda - source_only on day +0.0 ± 0.0" in within  # zero spread, zero mean: not a finding
    table = differences_table(seeds(dusk, day))
    assert "| apoda - source_only | dusk | +4.0 ± 1.0 | +3.0, +4.0, +5.0 | yes |" in table


def test_one_seed_measures_no_spread_and_names_nothing_a_finding():
    text = reading(seeds([row(10, 12, 20)], [row(50, 40, 30)]))
    assert "no difference exceeds twice its spread" in text
    assert "apoda - source_only on dusk +10.0." in text or "apoda - source_only on dusk +10.0;" in text
    assert "One seed measures no spread" in text
    m, s = spread([3.0])
    assert m == 3.0 and math.isnan(s)
