"""The share of a measured domain gap each method closes (compare's gap section)."""
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from uda_perturb.bench.gap import gap_closed, gap_table, read_gap
from uda_perturb.study import load_study, packaged_studies

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def diffs(**per_seed):
    return {name.replace("_", " "): {"miou": {"per_seed": v}} for name, v in per_seed.items()}


def test_share_is_each_seeds_gain_over_the_gap_and_the_quarter_goal_needs_the_mean_and_twice_the_spread():
    out = gap_closed(diffs(big=[3.0, 4.0, 5.0], small=[1.0, 2.0, 3.0], noisy=[0.0, 9.0, 3.0], one=[9.0]), 12.0)
    assert out["big"]["per_seed"] == [0.25, 0.333, 0.417]
    assert out["big"]["mean"] == pytest.approx(1 / 3)
    assert out["big"]["std"] == pytest.approx(math.sqrt(2 / 3) / 12)  # population std of 3, 4, 5, over the gap
    # big: mean 4 >= 12 / 4 and 4 > 2 * 0.816; small: mean 2 < 3; noisy: mean 4 but std 3.74 (2 std = 7.5)
    assert [out[k]["quarter_closed"] for k in ("big", "small", "noisy")] == [True, False, False]
    assert out["one"]["quarter_closed"] is False and out["one"]["n"] == 1  # one seed has no spread to beat


def test_a_negative_or_zero_gap_is_refused():
    with pytest.raises(ValueError, match="must be positive, got 0"):
        gap_closed(diffs(a=[1.0]), 0.0)


def test_gap_table_rows():
    table = gap_table(gap_closed(diffs(a=[3.0, 5.0]), 8.0), 8.0)
    assert "| pair | gain / gap (8.0 points) |" in table
    assert "| a | +50% ± 12% | +38%, +62% | met |" in table
    one = gap_table(gap_closed(diffs(b=[4.0]), 8.0), 8.0)
    assert "| b | +50% | +50% | needs 2+ seeds |" in one  # one seed: no "± 0%", and the goal is undecided


def test_read_gap_is_real_minus_rendered_and_none_without_a_record(tmp_path):
    rec = tmp_path / "g.json"
    rec.write_text(json.dumps({"mean_miou": {"rendered": 19.0, "real": 32.5}}))
    assert read_gap(rec) == pytest.approx(13.5)
    assert read_gap(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{}")
    assert read_gap(tmp_path / "bad.json") is None


def test_every_studys_gap_record_is_committed():
    records = {k: s.gap_record for k in packaged_studies() if (s := load_study(k)).gap_record}
    assert records == {"camvid_rendered": "setup_camvid_rendered.json",
                       "camvid_rendered_v4": "setup_camvid_rendered_v4.json"}
    assert read_gap(RESULTS / records["camvid_rendered"]) == pytest.approx(32.08 - 19.01)
    assert read_gap(RESULTS / records["camvid_rendered_v4"]) == pytest.approx(17.3, abs=0.05)  # the mended regime


def fake(tmp_path, label, seed, miou, split="real_test"):
    from uda_perturb.bench import Run

    d = tmp_path / f"{label.replace(' ', '')}_{seed}"
    d.mkdir()
    res = {s: {"iou": {"Road": miou, "Car": miou}, "miou": miou, "miou_tail": miou, "miou_head": miou}
           for s in (split, "source_test")}
    (d / "results.json").write_text(json.dumps({"results": res}))
    return Run(label, [], d, seed)


def test_every_method_is_measured_against_source_only_of_its_own_seed(tmp_path):
    from uda_perturb.bench.gap import closed_by_method

    # warm-start effects of +-10 points per seed cancel: dacs gains 2 and 4 over its own seed's source-only
    runs = [fake(tmp_path, "source_only +aug", 0, 20.0), fake(tmp_path, "source_only +aug", 1, 30.0),
            fake(tmp_path, "dacs +aug", 0, 22.0), fake(tmp_path, "dacs +aug", 1, 34.0),
            fake(tmp_path, "dacs+random +aug", 0, 19.0)]
    out = closed_by_method(runs, ["source_only", "dacs", "dacs+random", "absent"], [" +aug"], "real_test", 8.0)
    assert set(out) == {"dacs +aug - source_only +aug", "dacs+random +aug - source_only +aug"}
    assert out["dacs +aug - source_only +aug"]["per_seed"] == [0.25, 0.5]
    assert out["dacs+random +aug - source_only +aug"]["per_seed"] == [-0.125]


def test_the_comparison_report_has_the_gap_section_and_json_only_with_a_gap(tmp_path):
    from uda_perturb.bench.runner import FINGERPRINT
    from uda_perturb.study.plan import make_plan
    from uda_perturb.study.report import write_report

    study = load_study("camvid_rendered")
    (tmp_path / "gap.json").write_text(json.dumps({"mean_miou": {"real": 30.0, "rendered": 20.0}}))
    for gap, stem in ((str(tmp_path / "gap.json"), "with"), (None, "without")):
        plan = make_plan(replace(study, gap_record=gap), tmp_path / "work", [0, 1], ["source_only", "dacs"])
        for r in plan.adaptations():  # finished runs with these very settings: a fingerprint and results
            r.run_dir.mkdir(parents=True, exist_ok=True)
            (r.run_dir / FINGERPRINT).write_text(json.dumps(r.fingerprint(study.recipe)))
            miou = 20.0 + r.seed if r.label.startswith("source_only") else 24.0 + 2 * r.seed
            res = {s: {"iou": {"Road": miou}, "miou": miou, "miou_tail": miou, "miou_head": miou}
                   for s in ("real_test", "source_test")}
            (r.run_dir / "results.json").write_text(json.dumps({"results": res, "train_seconds": 1.0}))
        write_report(plan, tmp_path / "out", stem)
    md = (tmp_path / "out" / "with.md").read_text()
    assert "## Share of the gap closed on real_test" in md and "gap.md" in md
    assert "| dacs +aug - source_only +aug | +45% ± 5% | +40%, +50% | met |" in md
    assert "Partial report: 4 of 6 runs finished" in md  # the two warm starts have not run
    data = json.loads((tmp_path / "out" / "with.json").read_text())
    assert data["gap_points"] == 10.0 and data["gap_closed"]["dacs +aug - source_only +aug"]["n"] == 2
    assert "Share of the gap" not in (tmp_path / "out" / "without.md").read_text()
    assert "![share of the gap closed](with_gap.png)" in md
    assert (tmp_path / "out" / "with_gap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out" / "without_gap.png").exists()
    assert "gap_closed" not in json.loads((tmp_path / "out" / "without.json").read_text())


def test_gap_plot_draws_each_pairs_mean_spread_and_seeds_with_the_goal_line(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from uda_perturb.bench import gap as gap_module
    from uda_perturb.bench.report import pyplot

    plt, axes = pyplot(), []

    class Recording:  # the real pyplot, keeping the axes the plot drew on
        def __getattr__(self, name):
            return getattr(plt, name)

        def subplots(self, *a, **k):
            fig, ax = plt.subplots(*a, **k)
            axes.append(ax)
            return fig, ax

    monkeypatch.setattr(gap_module, "pyplot", Recording)
    shares = gap_closed(diffs(a=[2.0, 4.0], b=[-1.0, 1.0]), 8.0)
    path = gap_module.gap_plot(shares, 8.0, tmp_path / "g.png", "t")
    assert path == tmp_path / "g.png" and path.read_bytes()[:4] == b"\x89PNG"
    ax = axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.375, 0.0])  # bars: mean share
    dots = [list(line.get_ydata()) for line in ax.lines if line.get_marker() == "."]
    assert dots == [[0.25, 0.5], [-0.125, 0.125]]  # a dot per seed
    levels = sorted(line.get_ydata()[0] for line in ax.lines if line.get_linestyle() in ("-", "--", ":")
                    and line.get_marker() in ("None", "", None))
    assert levels == [0.0, 0.25, 1.0]
    assert gap_module.gap_plot({}, 8.0, tmp_path / "none.png", "t") is None and not (tmp_path / "none.png").exists()
