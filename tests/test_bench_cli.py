"""`uda-perturb study run --quick`: a user's study end to end (subprocess runs, report files), on synthetic data."""
import json

import pytest

from uda_perturb.cli import main

STUDY = """
base: synthetic
name: mine
augmentation: [false]
methods:
  source_only: [method.name=source_only]
  apoda: [method.name=apoda, 'method.options={ndf: 32}']
  dacs: [method.name=dacs]
  dacs+perturbation: [method.name=dacs, 'method.addons=[perturbation]']
pairs: [dacs+perturbation - dacs, dacs - source_only]
"""
# an ablation a user writes on top of the study above: its warm start and dacs runs are reused from its folder
RADII = """
base: mine.yaml
name: radii
folder: mine
methods:
  dacs: [method.name=dacs]
  dacs+perturbation eps0.05: [method.name=dacs, 'method.addons=[{name: perturbation, eps: 0.05}]']
  dacs+perturbation: [method.name=dacs, 'method.addons=[perturbation]']
pairs: [dacs+perturbation eps0.05 - dacs, dacs+perturbation - dacs]
select: 0.5
"""


def test_a_users_study_runs_end_to_end_and_writes_markdown_json_and_plots(tmp_path):
    (tmp_path / "mine.yaml").write_text(STUDY)
    (tmp_path / "radii.yaml").write_text(RADII)
    args = ["study", "run", str(tmp_path / "mine.yaml"), "--quick", "--jobs", "2", "--work-dir",
            str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    assert main(args) == 0
    md = (tmp_path / "results" / "mine_quick.md").read_text()
    data = json.loads((tmp_path / "results" / "mine_quick.json").read_text())
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
    assert data["environment"]["runs_finished"] == "5 of 5"
    assert (tmp_path / "results" / "mine_quick.png").is_file()
    assert (tmp_path / "results" / "mine_quick_cost.png").is_file()
    # the declared pairs are differenced seed by seed, in the file's order
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
    again = json.loads((tmp_path / "results" / "mine_quick.json").read_text())
    assert again["results"] == data["results"]
    # the restart's report keeps the full invocation's wall time
    first, restart = data["environment"], again["environment"]
    assert restart["wall_seconds_longest_invocation"] == first["wall_seconds_this_invocation"]
    assert restart["wall_seconds_this_invocation"] < first["wall_seconds_this_invocation"]

    # the radius ablation reuses the study's warm start and its dacs / dacs+perturbation runs
    work = tmp_path / "runs" / "mine_quick"
    reused = {d: (work / d / "results.json").stat().st_mtime_ns for d in ("dacs_plain_s0", "dacs_perturbation_plain_s0",
                                                                          "pretrain_plain_s0")}
    assert main(["study", "run", str(tmp_path / "radii.yaml"), "--quick", "--work-dir", str(tmp_path / "runs"),
                 "--results-dir", str(tmp_path / "results")]) == 0
    assert {d: (work / d / "results.json").stat().st_mtime_ns for d in reused} == reused
    assert (work / "dacs_perturbation_eps0.05_plain_s0" / "results.json").is_file()
    ablation = json.loads((tmp_path / "results" / "radii_quick.json").read_text())
    assert list(ablation["results"]) == ["warm start", "dacs", "dacs+perturbation eps0.05", "dacs+perturbation"]
    assert ablation["results"]["dacs"] == data["results"]["dacs"]
    radii_md = (tmp_path / "results" / "radii_quick.md").read_text()
    assert "Label-free choice (best source_test mIoU; within 0.5 points, the lowest target_test entropy): **" \
        in radii_md
    eps = ablation["results"]["dacs+perturbation eps0.05"]["target_test"]["miou"]["mean"]
    dacs_miou = ablation["results"]["dacs"]["target_test"]["miou"]["mean"]
    paired = ablation["paired_differences"]
    assert list(paired) == ["dacs+perturbation eps0.05 - dacs", "dacs+perturbation - dacs"]
    assert paired["dacs+perturbation eps0.05 - dacs"]["miou"]["per_seed"] == [round(eps - dacs_miou, 2)]
    # status: every run done; the time left is none
    status = run_cli(["study", "status", str(tmp_path / "radii.yaml"), "--quick", "--work-dir", str(tmp_path / "runs")])
    assert status.splitlines()[0].endswith("4 done; time left at 2 jobs: 0.00 h")


def run_cli(argv):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


def test_learning_curve_evaluates_every_k_iterations_and_picks_without_target_labels(tmp_path):
    from uda_perturb.bench.curve import main as curve_main

    (tmp_path / "synthetic.yaml").write_text(STUDY)  # a study file: the curve follows its protocol
    assert curve_main(["--dataset", str(tmp_path / "synthetic.yaml"), "--pretrain-iters", "4", "--iters", "4",
                       "--every", "2",
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
