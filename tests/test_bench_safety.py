"""Benchmarks never overwrite committed results unasked, reuse a run folder only for the very run it holds,
continue a run cut off from its checkpoint, and start an adaptation run only once its warm start exists."""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import TINY, die_during_step

from uda_perturb.bench.report import ResultsExistError, check_replace, environment, results_folder
from uda_perturb.bench.runner import FINGERPRINT, STARTED, Run, launch, lock_path, run_all, start_weights
from uda_perturb.config import load_config
from uda_perturb.engine import Trainer


def _args(results_dir=None, force=False, work_dir="w"):
    return argparse.Namespace(results_dir=results_dir, force=force, work_dir=work_dir)


def compare_main(argv, results_dir):
    """benchmarks/compare.py: a packaged study run with the committed results folder."""
    from uda_perturb.study import main

    i = argv.index("--dataset")
    return main(["run", argv[i + 1], *argv[:i], *argv[i + 2:]], results_default=results_dir)


def test_the_recorded_command_carries_the_variables_that_change_cpu_timings(monkeypatch):
    for key in [k for k in os.environ if k.startswith(("MALLOC_", "LD_PRELOAD", "OMP_", "MKL_", "KMP_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(sys, "argv", ["benchmarks/speed.py", "--out", "a b"])
    assert environment()["command"] == "python benchmarks/speed.py --out 'a b'"
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4294967296")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("PATH_UNRELATED", "x")
    assert environment()["command"] == ("MALLOC_MMAP_THRESHOLD_=4294967296 OMP_NUM_THREADS=2 python "
                                        "benchmarks/speed.py --out 'a b'")


def test_results_folder_is_the_given_one_else_the_default(tmp_path):
    default = tmp_path / "benchmarks" / "results"
    assert results_folder(_args(), default) == default
    assert results_folder(_args(results_dir=str(tmp_path / "x")), default) == tmp_path / "x"


def test_a_quick_study_never_writes_its_report_in_the_committed_folder(tmp_path):
    from uda_perturb.study import _results, build_parser, load_study
    from uda_perturb.study.plan import make_plan

    args = build_parser().parse_args(["run", "synthetic", "--quick"])
    args.results_default = tmp_path / "benchmarks" / "results"
    plan = make_plan(load_study("synthetic"), tmp_path / "runs", quick=True)
    assert _results(args, plan) == tmp_path / "runs" / "compare_synthetic_quick"
    args.quick = False
    assert _results(args, plan) == tmp_path / "benchmarks" / "results"


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
        compare_main(["--dataset", "synthetic", "--methods", "source_only", "--with", "augmentation=[false]",
                      "--work-dir", str(tmp_path / "runs")], results_dir=results)
    assert not (tmp_path / "runs").exists()  # refused before any run started
    assert (results / "compare_synthetic.json").read_text() == "{}"


def test_a_seed_subset_has_its_own_results_stem_over_the_same_run_folder():
    from uda_perturb.study import _stem, build_parser, load_study
    from uda_perturb.study.plan import make_plan

    study = load_study("camvid")

    def stem(*flags, seeds=None):
        return _stem(build_parser().parse_args(["report", "camvid", *flags]), make_plan(study, "w", seeds))

    assert stem() == stem(seeds=[0, 1, 2]) == "compare_camvid"
    assert stem(seeds=[0]) == "compare_camvid_seeds0" and stem(seeds=[0, 2]) == "compare_camvid_seeds0-2"
    assert stem(seeds=[2, 1, 0]) == "compare_camvid_seeds2-1-0"
    assert stem("--name", "mine", seeds=[0]) == "mine" and stem("--quick") == "compare_camvid_quick"


def test_a_partial_comparison_neither_replaces_nor_is_named_as_the_full_one(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "compare_synthetic.json").write_text("{}")
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("uda_perturb.study.launchers.run_all", lambda recipe, runs, *a: calls.append(runs))
        mp.setattr("uda_perturb.study.write_report", lambda plan, out, stem, *a: calls.append(
            (plan.work.name, stem)) or results / "compare_synthetic.json")
        compare_main(["--dataset", "synthetic", "--seeds", "0", "--methods", "source_only", "--with",
                      "augmentation=[false]", "--work-dir", str(tmp_path / "runs")], results_dir=results)
    assert calls[-1] == ("compare_synthetic", "compare_synthetic_seeds0")  # the full run folder, its own stem
    assert (results / "compare_synthetic.json").read_text() == "{}"


def _run(tmp_path, *extra):
    return Run("tiny", TINY + ["train.iters=1", "data.num_workers=0", *extra], tmp_path / "run", seed=0)


def test_a_run_folder_is_reused_only_for_the_same_resolved_config(tmp_path, capsys, monkeypatch):
    run = _run(tmp_path)
    assert run.differences("synthetic_demo") is None and not run.done("synthetic_demo")
    assert launch("synthetic_demo", run, tmp_path / "logs") > 0
    assert run.done("synthetic_demo")
    calls = []
    real = Run.fingerprint
    monkeypatch.setattr(Run, "fingerprint", lambda self, recipe: calls.append(recipe) or real(self, recipe))
    assert launch("synthetic_demo", run, tmp_path / "logs") == 0.0  # reused
    assert calls == ["synthetic_demo"]  # the config loaded and the weights hashed once per launch
    monkeypatch.undo()
    other = _run(tmp_path, "train.lr=0.5")
    assert other.differences("synthetic_demo") == ["config.train.lr"]
    assert launch("synthetic_demo", other, tmp_path / "logs") > 0  # retrained, not reported from the old run
    assert "other settings (config.train.lr)" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / FINGERPRINT).read_text())["config"]["train"]["lr"] == 0.5
    assert "lr: 0.5" in (tmp_path / "run" / "config.yaml").read_text()
    (tmp_path / "run" / FINGERPRINT).unlink()  # a folder from before fingerprints is not trusted
    assert not other.done("synthetic_demo")


HOLD = "import fcntl, sys; fh = open(sys.argv[1], 'a'); fcntl.flock(fh, fcntl.LOCK_EX); print('held', flush=True); " \
       "sys.stdin.read()"


def test_a_run_another_process_holds_is_waited_for_then_reused_not_trained_twice(tmp_path, capsys):
    run = Run("x", TINY + ["train.iters=1", "data.num_workers=0"], tmp_path / "work" / "r", seed=0)
    run.run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path(run.run_dir))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    result = []
    waiter = threading.Thread(target=lambda: result.append(launch("synthetic_demo", run, tmp_path / "logs")))
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive() and result == []
    # the other process finishes the run while this one waits
    (run.run_dir / "results.json").write_text("{}")
    (run.run_dir / FINGERPRINT).write_text(json.dumps(run.fingerprint("synthetic_demo")))
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0
    waiter.join(timeout=120)
    assert result == [0.0]  # looked at the folder only once it was free: reused, not trained again
    assert "another process is training this run; waiting for it" in capsys.readouterr().out
    assert launch("synthetic_demo", run, tmp_path / "logs") == 0.0  # released: a later launch does not wait
    assert lock_path(run.run_dir) == tmp_path / "work" / ".r.lock"  # beside the folder, which holds only run files


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


def test_a_work_folder_named_another_way_keeps_its_runs(tmp_path, monkeypatch):
    (tmp_path / "w").mkdir()
    weights = tmp_path / "w" / "warm.pt"
    weights.write_bytes(b"a")
    made = Run("x", [f"model.weights={weights}"], tmp_path / "r", 0)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text("{}")
    (tmp_path / "r" / FINGERPRINT).write_text(json.dumps(made.fingerprint("synthetic_demo")))
    monkeypatch.chdir(tmp_path)
    relative = Run("x", ["model.weights=w/warm.pt"], tmp_path / "r", 0)  # --work-dir w instead of /abs/w
    assert relative.differences("synthetic_demo") == []  # the same bytes: the same run, not trained again
    moved = tmp_path / "moved.pt"
    moved.write_bytes(b"b")
    assert Run("x", [f"model.weights={moved}"], tmp_path / "r", 0).differences("synthetic_demo") == [
        "weights_sha256"]


def test_a_run_cut_off_continues_from_its_checkpoint_and_ends_as_if_never_stopped(tmp_path):
    extra = ["train.iters=4", "train.checkpoint_every=2"]
    whole = _run(tmp_path / "whole", *extra)
    launch("synthetic_demo", whole, tmp_path / "logs")
    cut = _run(tmp_path / "cut", *extra)
    # cut off after iteration 3 (checkpoint at 2), as a benchmark stopped mid-run leaves its folder
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the benchmark's subprocesses run one thread: same bits
    try:
        trainer = Trainer(load_config("synthetic_demo", cut.overrides + ["seed=0"]), cut.run_dir, progress=False)
        die_during_step(trainer, 4)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    finally:
        torch.set_num_threads(threads)
    assert not cut.resumable("synthetic_demo")  # no record that the folder was started for this run
    (cut.run_dir / STARTED).write_text(json.dumps(cut.fingerprint("synthetic_demo")))
    assert cut.resumable("synthetic_demo")
    assert not _run(tmp_path / "cut", *extra, "train.lr=0.5").resumable("synthetic_demo")
    assert launch("synthetic_demo", cut, tmp_path / "cut_logs") > 0
    assert "resuming from iteration 2 of 4" in (tmp_path / "cut_logs" / "run.log").read_text()
    assert cut.done("synthetic_demo")
    a = torch.load(whole.run_dir / "segmentor.pt", weights_only=True)
    b = torch.load(cut.run_dir / "segmentor.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint cadence does not change what a run computes: the finished run counts for any cadence
    assert _run(tmp_path / "cut", "train.iters=4", "train.checkpoint_every=1").done("synthetic_demo")


def test_an_adaptation_run_waits_for_its_own_warm_start_only(tmp_path):
    warm = _run(tmp_path / "warm")
    adapt = Run("adapt", warm.overrides + [f"model.weights={warm.run_dir / 'segmentor.pt'}"], tmp_path / "adapt", 0)
    with pytest.raises(ValueError, match="comes after it"):
        run_all("synthetic_demo", [adapt, warm], 2, tmp_path / "logs")
    run_all("synthetic_demo", [warm, adapt], 2, tmp_path / "logs")  # started at once, it would find no weights
    assert warm.done("synthetic_demo") and adapt.done("synthetic_demo")
    assert start_weights(adapt) == str(warm.run_dir / "segmentor.pt") and start_weights(warm) is None
