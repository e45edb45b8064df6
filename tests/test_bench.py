"""Benchmark aggregation over seeds, on fake run folders."""
import json

import pytest
from helpers import benchmark_module

from uda_perturb.bench import Run, aggregate, per_class_table, summary_table
from uda_perturb.bench.report import cost_clock, relative_cost


def fake_run(tmp_path, label, seed, miou, tail, road):
    d = tmp_path / f"{label}_{seed}"
    d.mkdir()
    res = {"target": {"iou": {"road": road, "pole": None}, "miou": miou, "miou_tail": tail, "pixel_accuracy": 90.0},
           "source": {"iou": {"road": 99.0, "pole": 1.0}, "miou": 50.0, "miou_tail": 1.0}}
    (d / "results.json").write_text(json.dumps({"results": res}))
    return Run(label, [], d, seed)


def test_mean_std_over_seeds_and_tables(tmp_path):
    runs = [fake_run(tmp_path, "a", 0, 10.0, 1.0, 80.0), fake_run(tmp_path, "a", 1, 20.0, 3.0, 90.0),
            fake_run(tmp_path, "b", 0, 30.0, 5.0, 70.0)]
    agg = aggregate(runs)
    assert agg["a"]["seeds"] == 2 and agg["a"]["target"]["miou"]["mean"] == pytest.approx(15.0)
    assert agg["a"]["target"]["miou"]["std"] == pytest.approx(5.0)  # population std over seeds
    assert agg["a"]["target"]["iou"]["pole"]["n"] == 0  # absent class stays NaN, not 0
    table = summary_table(agg, "target", ["tail"], "source")
    assert "| a | 2 | 15.0 ± 5.0 | 2.0 ± 1.0 | 50.0 ± 0.0 |" in table
    assert "| b | 1 | 30.0 | 5.0 | 50.0 |" in table
    assert "| a | 85.0 ± 5.0 | - |" in per_class_table(agg, "target")


def timed_run(tmp_path, label, seed, wall, cpu):
    d = tmp_path / f"{label}_{seed}"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"results": {}, "train_seconds": wall, "train_cpu_seconds": cpu}))
    return Run(label, [], d, seed)


def test_cost_reads_each_runs_cpu_time_and_wall_time_only_when_a_run_lacks_it(tmp_path):
    # wall times inflated by another job on the machine during the source-only run; CPU times are not
    runs = [timed_run(tmp_path, "source_only", 0, 400.0, 100.0), timed_run(tmp_path, "source_only", 1, 100.0, 140.0),
            timed_run(tmp_path, "dacs", 0, 200.0, 250.0), timed_run(tmp_path, "dacs +aug", 0, 50.0, 60.0),
            timed_run(tmp_path, "source_only +aug", 0, 10.0, 20.0)]
    assert cost_clock(runs) == "train_cpu_seconds"
    cost = relative_cost(runs, iters=10)
    assert cost["source_only"] == {"seconds_per_iter": 12.0, "relative_to_source_only": 1.0}  # mean of 10, 14
    assert cost["dacs"] == {"seconds_per_iter": 25.0, "relative_to_source_only": round(25 / 12, 2)}
    assert cost["dacs +aug"]["relative_to_source_only"] == 3.0  # against its own arm's source-only
    old = timed_run(tmp_path, "old", 0, 30.0, None)  # trained or resumed before CPU time was recorded
    assert cost_clock(runs + [old]) == "train_seconds"
    cost = relative_cost(runs + [old], iters=10)
    assert cost["source_only"]["seconds_per_iter"] == 25.0 and cost["dacs"]["relative_to_source_only"] == 0.8
    assert cost_clock([]) == "train_seconds"


def test_variant_selection_uses_source_miou_then_target_entropy_never_target_miou():
    from uda_perturb.bench import select_variant

    def v(src, ent, tgt):
        return {"src": {"miou": {"mean": src}}, "tgt": {"miou": {"mean": tgt}, "mean_entropy": {"mean": ent}}}

    agg = {"best_src": v(40.0, 30.0, 10.0), "near_low_ent": v(39.7, 20.0, 12.0), "far": v(38.0, 5.0, 50.0)}
    assert select_variant(agg, "src", "tgt", tolerance=0.5) == "near_low_ent"
    assert select_variant(agg, "src", "tgt", tolerance=0.0) == "best_src"


def test_aggregate_keeps_the_label_free_target_entropy(tmp_path):
    runs = []
    for seed, ent in ((0, 30.0), (1, 40.0)):
        d = tmp_path / f"r{seed}"
        d.mkdir()
        res = {"t": {"iou": {"road": 1.0}, "miou": 1.0, "mean_entropy": ent, "pixel_accuracy": 5.0}}
        (d / "results.json").write_text(json.dumps({"results": res}))
        runs.append(Run("x", [], d, seed))
    agg = aggregate(runs)
    assert agg["x"]["t"]["mean_entropy"]["mean"] == pytest.approx(35.0)
    assert "pixel_accuracy" not in agg["x"]["t"]


def test_a_plan_gives_each_seed_its_own_warm_start_and_one_folder_per_run(tmp_path):
    from uda_perturb.study import load_study
    from uda_perturb.study.plan import make_plan

    p = make_plan(load_study("ablate_dacs_camvid_pretrained"), tmp_path)
    work = tmp_path / "compare_camvid_pretrained"  # the comparison's folder: its runs are reused
    assert [w.run_dir for w in p.warm_starts()] == [work / f"pretrain_aug_s{s}" for s in (0, 1, 2)]
    run = p.adaptation("dacs+perturbation eps0.05", True, 2)
    assert run.run_dir == work / "dacs_perturbation_eps0.05_aug_s2"
    assert run.label == "dacs+perturbation eps0.05 +aug"
    assert f"model.weights={work / 'pretrain_aug_s2' / 'segmentor.pt'}" in run.overrides
    assert "data.target.transforms.photometric=true" in run.overrides and "train.lr=0.0001" in run.overrides
    # held-out dusk: adapt on frames 6690-7860, evaluate on 7890-8520
    assert any("frames: [6690, 7860]" in o for o in run.overrides)
    assert any("frames: [7890, 8520]" in o for o in run.overrides)
    shared = make_plan(load_study("ablate_apoda_camvid"), tmp_path, seeds=[0, 1])
    assert [w.run_dir.name for w in shared.warm_starts()] == ["pretrain_plain"]
    weights = f"model.weights={tmp_path / 'ablate_apoda_camvid' / 'pretrain_plain' / 'segmentor.pt'}"
    assert weights in shared.adaptation("default", False, 1).overrides


def test_paired_differences_are_taken_seed_by_seed(tmp_path):
    from uda_perturb.bench.report import differences_table, paired_differences

    def run(label, seed, miou, tail, head):
        d = tmp_path / f"{label}_{seed}"
        d.mkdir()
        res = {"t": {"iou": {}, "miou": miou, "miou_tail": tail, "miou_head": head}}
        (d / "results.json").write_text(json.dumps({"results": res}))
        return Run(label, [], d, seed)

    # seed effects (warm starts) of +-5 points cancel in the paired difference, which is 1 and 3
    runs = [run("a", 0, 25.0, 2.0, 40.0), run("b", 0, 24.0, 1.0, 39.0),
            run("a", 1, 33.0, 6.0, 50.0), run("b", 1, 30.0, 2.0, 49.0), run("c", 0, 1.0, 1.0, 1.0)]
    diffs = paired_differences(runs, [("a", "b"), ("a", "missing"), ("c", "b")], "t")
    assert set(diffs) == {"a - b", "c - b"}
    assert diffs["a - b"]["miou"]["mean"] == pytest.approx(2.0) and diffs["a - b"]["miou"]["std"] == pytest.approx(1.0)
    assert diffs["a - b"]["miou_tail"]["mean"] == pytest.approx(2.5)
    assert diffs["a - b"]["miou"]["per_seed"] == [1.0, 3.0]
    assert diffs["c - b"]["miou"]["n"] == 1  # only seed 0 has both
    assert "| a - b | +2.0 ± 1.0 | +2.5 ± 1.5 | +1.0 ± 0.0 | +1.0, +3.0 |" in differences_table(diffs, "t")
    # one seed has no spread: its row shows the difference alone, never a "± 0.0" that reads as certainty
    assert "| c - b | -23.0 | +0.0 | -38.0 | -23.0 |" in differences_table(diffs, "t")


def test_mutation_runs_every_configured_module_against_existing_test_files():
    """Each module of setup.cfg's [mutmut] set gets a list of test files that exist (a renamed test file would
    silently make every mutant of its module survive)."""
    m = benchmark_module("mutation_testing/mutation")
    ROOT, TESTS, configured_modules, tests_for = m.ROOT, m.TESTS, m.configured_modules, m.tests_for

    modules = configured_modules()
    assert len(modules) == 28 and set(TESTS) <= set(modules)
    for module in modules:
        tests = tests_for(module)
        assert tests and tests != ["tests"], module
        assert all((ROOT / t.split("::")[0]).is_file() for t in tests), (module, tests)
        for node in (t for t in tests if "::" in t):  # a renamed test function would be as silent
            assert f"def {node.split('::')[1]}(" in (ROOT / node.split("::")[0]).read_text(), node
    assert tests_for("uda_perturb/perturb.py")[:3] == ["tests/test_perturb_settings.py", "tests/test_perturb_steps.py",
                                                       "tests/test_perturb.py"]


def test_a_mutation_clone_is_reset_to_the_commit_without_a_left_mutant_backup_or_bytecode(tmp_path):
    """A run stopped mid-mutant leaves the mutant in the source, mutmut's ``.bak`` beside it and maybe bytecode:
    the next sync must remove all three and keep the mutmut cache unless asked for a fresh one."""
    m = benchmark_module("mutation_testing/mutation")
    ENV, sync_clone = m.ENV, m.sync_clone

    clone = tmp_path / "clone"
    sync_clone(clone)
    source = clone / "uda_perturb" / "perturb.py"
    original = source.read_text()
    source.write_text(original.replace("def ", "def mutant_", 1))
    (clone / "uda_perturb" / "perturb.py.bak").write_text(original)
    (clone / "uda_perturb" / "__pycache__").mkdir(exist_ok=True)
    (clone / "uda_perturb" / "__pycache__" / "perturb.cpython.pyc").write_bytes(b"x")
    (clone / ".mutmut-cache").write_text("cache")
    sync_clone(clone)
    assert source.read_text() == original  # the committed file back
    assert not list(clone.rglob("*.py.bak")) and not list(clone.rglob("__pycache__"))
    assert (clone / ".mutmut-cache").read_text() == "cache"
    sync_clone(clone, fresh=True)
    assert not (clone / ".mutmut-cache").exists()
    assert ENV["PYTHONDONTWRITEBYTECODE"] == "1" and ENV["OMP_NUM_THREADS"] == "1"


def test_every_packaged_study_resolves_and_v3_adapts_with_what_its_curve_chose(tmp_path):
    """Each study's runs load as configs at read (a typo in an override or method fails there, not an hour into a
    benchmark), and v3 adapts with the length and lr its learning curve chose."""
    from uda_perturb.config import load_config
    from uda_perturb.study import load_study, packaged_studies
    from uda_perturb.study.plan import make_plan

    for name in packaged_studies():
        study = load_study(name)
        plan = make_plan(study, tmp_path)
        for run in plan.adaptations()[:len(study.methods)]:
            cfg = load_config(study.recipe, run.overrides)
            assert cfg.train.iters == study.adaptation.iters
            assert cfg.method.name == study.methods[run.label.replace(" +aug", "")][0].split("=")[1]
    v3 = load_study("camvid_pretrained_v3")
    assert (v3.adaptation.iters, v3.adaptation.lr, v3.evaluation.target) == (500, 1e-4, "target_dusk_heldout")
    assert load_study("camvid_rendered").evaluation.target == "real_test"
