"""`uda-perturb bench --quick`: the comparison end to end (subprocess runs, report files), on synthetic data."""
import json

import pytest

from uda_perturb.bench.ablate import main as ablate_main
from uda_perturb.cli import main


def test_bench_quick_runs_the_comparison_and_writes_markdown_json_and_plot(tmp_path):
    args = ["bench", "--dataset", "synthetic", "--quick", "--methods", "source_only", "apoda", "dacs",
            "dacs+perturbation", "--aug", "off", "--jobs", "2", "--work-dir", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results")]
    assert main(args) == 0
    md = (tmp_path / "results" / "compare_synthetic_quick.md").read_text()
    data = json.loads((tmp_path / "results" / "compare_synthetic_quick.json").read_text())
    assert set(data["results"]) == {"warm start", "source_only", "apoda", "dacs", "dacs+perturbation"}
    assert data["cost"]["source_only"]["relative_to_source_only"] == 1.0 and "| dacs |" in md
    assert data["environment"]["cost_clock"] == "train_cpu_seconds"
    assert "## Cost (training CPU seconds of each run's own process, per iteration)" in md
    assert data["cost"]["apoda"]["relative_to_source_only"] > 1.0  # APODA's step does more than source-only's
    for label in data["results"]:
        assert f"| {label} | 1 |" in md
        assert 0.0 <= data["results"][label]["target_test"]["miou"]["mean"] <= 100.0
        assert "mean_entropy" in data["results"][label]["target_test"]
    assert data["environment"]["adapt_iters"] == 10 and data["environment"]["seeds"] == [0]
    assert (tmp_path / "results" / "compare_synthetic_quick.png").is_file()
    assert (tmp_path / "results" / "compare_synthetic_quick_cost.png").is_file()
    # the method / baseline pairs present are differenced seed by seed
    assert list(data["paired_differences"]) == ["dacs+perturbation - dacs", "dacs - source_only"]
    assert "| dacs+perturbation - dacs |" in md
    assert list(data["paired_differences_source"]) == ["dacs+perturbation - dacs", "dacs - source_only"]
    src = data["paired_differences_source"]["dacs - source_only"]["miou"]
    want = data["results"]["dacs"]["source_test"]["miou"]["mean"] - data["results"]["source_only"]["source_test"][
        "miou"]["mean"]  # one seed: the paired difference is the difference of the two runs' source-test mIoU
    assert src["per_seed"][0] == pytest.approx(want, abs=0.011)
    assert "## Paired differences on source_test (the source domain's test frames" in md
    # a second invocation skips finished runs and only rewrites the report
    assert main(args) == 0
    again = json.loads((tmp_path / "results" / "compare_synthetic_quick.json").read_text())
    assert again["results"] == data["results"]
    # the restart's report keeps the full invocation's wall time
    first, restart = data["environment"], again["environment"]
    assert restart["wall_seconds_longest_invocation"] == first["wall_seconds_this_invocation"]
    assert restart["wall_seconds_this_invocation"] < first["wall_seconds_this_invocation"]

    # the DACS radius ablation reuses the comparison's warm start and its dacs / dacs+perturbation runs
    work = tmp_path / "runs" / "compare_synthetic_quick"
    reused = {d: (work / d / "results.json").stat().st_mtime_ns for d in ("dacs_plain_s0", "dacs_perturbation_plain_s0",
                                                                          "pretrain_plain_s0")}
    assert ablate_main(["--dataset", "synthetic", "--method", "dacs", "--quick", "--aug", "off", "--work-dir",
                        str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]) == 0
    assert {d: (work / d / "results.json").stat().st_mtime_ns for d in reused} == reused
    assert (work / "dacs_perturbation_eps0.05_plain_s0" / "results.json").is_file()
    ablation = json.loads((tmp_path / "results" / "ablate_dacs_synthetic_quick.json").read_text())
    assert list(ablation["results"]) == ["dacs", "dacs+perturbation eps0.05", "dacs+perturbation",
                                         "dacs+perturbation eps0.2"]
    assert ablation["selected"] in ablation["results"]
    assert ablation["results"]["dacs"] == data["results"]["dacs"]
    assert "**(selected)**" in (tmp_path / "results" / "ablate_dacs_synthetic_quick.md").read_text()
    # each radius paired with DACS of its own seed, on the target and the source test split
    paired = ablation["paired_differences"]
    assert set(paired) == {"target_test", "source_test"}
    assert list(paired["target_test"]) == ["dacs+perturbation eps0.05 - dacs", "dacs+perturbation - dacs",
                                           "dacs+perturbation eps0.2 - dacs"]
    eps02 = ablation["results"]["dacs+perturbation eps0.2"]["target_test"]["miou"]["mean"]
    dacs_miou = ablation["results"]["dacs"]["target_test"]["miou"]["mean"]
    assert paired["target_test"]["dacs+perturbation eps0.2 - dacs"]["miou"]["per_seed"] == [round(eps02 - dacs_miou, 2)]


def test_learning_curve_evaluates_every_k_iterations_and_picks_without_target_labels(tmp_path):
    from uda_perturb.bench.curve import main as curve_main

    assert curve_main(["--dataset", "synthetic", "--pretrain-iters", "4", "--iters", "4", "--every", "2",
                       "--lrs", "0.001", "0.002", "--work-dir", str(tmp_path / "runs"),
                       "--results-dir", str(tmp_path / "res")]) == 0
    data = json.loads((tmp_path / "res" / "curve_synthetic.json").read_text())
    assert set(data["curves"]) == {f"{m} lr {lr}" for m in ("source_only", "dacs") for lr in ("0.001", "0.002")}
    assert all([p["iteration"] for p in c] == [2, 4] for c in data["curves"].values())
    pick = data["selected"]
    dacs = {(lr, p["iteration"]): p for lr in ("0.001", "0.002") for p in data["curves"][f"dacs lr {lr}"]}
    best = max(p["source_test"]["miou"] for p in dacs.values())
    chosen = dacs[(pick["lr"], pick["iters"])]
    assert chosen["source_test"]["miou"] >= best - 0.5  # chosen on the source split (and entropy), never target
    assert "**It picks lr" in (tmp_path / "res" / "curve_synthetic.md").read_text()
