"""Benchmarks never overwrite committed results unasked, and reuse a run folder only for the very run it holds."""
import argparse
import json

import pytest
from helpers import TINY

from uda_perturb.bench.compare import main as compare_main
from uda_perturb.bench.report import ResultsExistError, check_replace, results_folder
from uda_perturb.bench.runner import FINGERPRINT, Run, launch


def _args(results_dir=None, force=False, work_dir="w"):
    return argparse.Namespace(results_dir=results_dir, force=force, work_dir=work_dir)


def test_results_folder_quick_runs_never_land_in_the_default_folder(tmp_path):
    default = tmp_path / "benchmarks" / "results"
    assert results_folder(_args(), default) == default
    assert results_folder(_args(work_dir=str(tmp_path / "runs")), default, quick=True) == tmp_path / "runs" / "results"
    assert results_folder(_args(results_dir=str(tmp_path / "x")), default, quick=True) == tmp_path / "x"


def test_existing_results_are_replaced_only_with_force_or_an_explicit_folder(tmp_path, capsys):
    (tmp_path / "compare_camvid.md").write_text("committed")
    (tmp_path / "compare_camvid_cost.png").write_text("committed")
    with pytest.raises(ResultsExistError, match=r"compare_camvid\.md, compare_camvid_cost\.png; pass --force"):
        check_replace(_args(), tmp_path, "compare_camvid", ["compare_camvid.png", "compare_camvid_cost.png"])
    check_replace(_args(force=True), tmp_path, "compare_camvid", ["compare_camvid_cost.png"])
    assert "replacing compare_camvid.md, compare_camvid_cost.png" in capsys.readouterr().out
    check_replace(_args(results_dir=str(tmp_path)), tmp_path, "compare_camvid")  # the user's own folder
    check_replace(_args(), tmp_path, "compare_camvid_pretrained")  # another stem: nothing to replace


def test_compare_refuses_before_training_anything(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "compare_synthetic.json").write_text("{}")
    with pytest.raises(ResultsExistError, match="--force"):
        compare_main(["--dataset", "synthetic", "--seeds", "0", "--methods", "source_only", "--aug", "off",
                      "--work-dir", str(tmp_path / "runs")], results_dir=results)
    assert not (tmp_path / "runs").exists()  # refused before any run started
    assert (results / "compare_synthetic.json").read_text() == "{}"


def _run(tmp_path, *extra):
    return Run("tiny", TINY + ["train.iters=1", "data.num_workers=0", *extra], tmp_path / "run", seed=0)


def test_a_run_folder_is_reused_only_for_the_same_resolved_config(tmp_path, capsys):
    run = _run(tmp_path)
    assert run.differences("synthetic_demo") is None and not run.done("synthetic_demo")
    assert launch("synthetic_demo", run, tmp_path / "logs") > 0
    assert run.done("synthetic_demo")
    assert launch("synthetic_demo", run, tmp_path / "logs") == 0.0  # reused
    other = _run(tmp_path, "train.lr=0.5")
    assert other.differences("synthetic_demo") == ["config.train.lr"]
    assert launch("synthetic_demo", other, tmp_path / "logs") > 0  # retrained, not reported from the old run
    assert "other settings (config.train.lr)" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / FINGERPRINT).read_text())["config"]["train"]["lr"] == 0.5
    assert "lr: 0.5" in (tmp_path / "run" / "config.yaml").read_text()
    (tmp_path / "run" / FINGERPRINT).unlink()  # a folder from before fingerprints is not trusted
    assert not other.done("synthetic_demo")


def test_a_changed_warm_start_invalidates_the_runs_made_from_it(tmp_path):
    weights = tmp_path / "warm.pt"
    weights.write_bytes(b"a")
    run = Run("x", [f"model.weights={weights}"], tmp_path / "r", 0)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text("{}")
    (tmp_path / "r" / FINGERPRINT).write_text(json.dumps(run.fingerprint("synthetic_demo")))
    assert run.done("synthetic_demo")
    weights.write_bytes(b"b")
    assert run.differences("synthetic_demo") == ["weights_sha256"]
