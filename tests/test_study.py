"""Studies: the packaged comparisons declare the very runs the old harness built, a study file is validated
before any run, a user's own method runs from the module the file imports, and the slurm launcher (through
submitit's local executor) gives the local launcher's report, a preempted job resuming bit-identically."""
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from uda_perturb.config import load_config, to_dict
from uda_perturb.errors import ConfigError, UserError
from uda_perturb.study import build_parser, dry_run_text, load_study, main, status_text
from uda_perturb.study.plan import make_plan
from uda_perturb.study.progress import iteration

LEGACY = Path(__file__).parent / "data" / "legacy_runs.json"
TINY_STUDY = """
name: tiny
recipe: synthetic_demo
overrides: ["model.backbone_options={width: 8}", "model.head=conv1x1", "model.head_options={}",
  "data.source.options={domain: source, size: [32, 48], length: 16}",
  "data.target.options={domain: target, size: [32, 48], length: 16}",
  "data.eval.target_test.options={domain: target, size: [32, 48], length: 4}",
  "data.eval.source_test.options={domain: source, size: [32, 48], length: 4}",
  train.checkpoint_every=2, train.log_every=1]
warm_start: {iters: 4, batch: 2}
adaptation: {iters: 24, batch: 2}
seeds: [0]
evaluation: {target: target_test, source: source_test, groups: [tail, head]}
methods:
  source_only: [method.name=source_only]
  apoda: [method.name=apoda, 'method.options={ndf: 8}']
pairs: [apoda - source_only]
slurm: {cpus_per_task: 1}
"""


def _digest(study, run):
    cfg = to_dict(load_config(study.recipe, run.overrides + [f"seed={run.seed}"]))
    cfg["model"].pop("weights", None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", ["camvid", "camvid_pretrained", "camvid_pretrained_v3", "camvid_rendered",
                                  "camvid_rendered_v4", "synthetic"])
def test_each_packaged_comparison_declares_the_runs_the_old_harness_built(name):
    """tests/data/legacy_runs.json: every run of the Python-table harness this replaced (folder, label, resolved
    config, start weights), recorded before it was removed. Same folder + same fingerprint: the committed
    comparisons' run folders are reused, not retrained (v4's, with the two attack-alone runs of its ablation)."""
    want = json.loads(LEGACY.read_text())[name]
    extra = {"camvid_rendered_v4": ["apoda_attacks_v4"], "camvid_pretrained": ["ablate_dacs_camvid_pretrained"],
             "camvid_pretrained_v3": ["ablate_dacs_camvid_pretrained_v3"]}
    got = {}
    for study_name in [name, *extra.get(name, [])]:
        study = load_study(study_name)
        plan = make_plan(study, "W")
        assert plan.work == Path("W") / f"compare_{name}"
        for r in plan.runs():
            start = next((o.split("=", 1)[1] for o in r.overrides if o.startswith("model.weights=")), None)
            got[r.run_dir.name] = {"label": r.label, "config": _digest(study, r),
                                   "start": str(Path(start).relative_to(plan.work)) if start else None}
    assert got == want


def _write(tmp_path, text, name="s.yaml"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_a_study_file_is_refused_in_one_line_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'seed' \(did you mean 'seeds'\?\)"):
        load_study(_write(tmp_path, TINY_STUDY + "seed: [0]\n"))
    bad_method = TINY_STUDY.replace("[method.name=apoda,", "[method.name=apodaa,")
    with pytest.raises(ConfigError, match=r"study tiny, apoda: .*'apodaa'.*apoda"):
        load_study(_write(tmp_path, bad_method))
    with pytest.raises(ConfigError, match="pair 'apoda - dacs' names 'dacs', not one of its methods"):
        load_study(_write(tmp_path, TINY_STUDY.replace("[apoda - source_only]", "[apoda - dacs]")))
    with pytest.raises(ConfigError, match="evaluation split 'real_test' is not among the recipe's data.eval"):
        load_study(_write(tmp_path, TINY_STUDY.replace("{target: target_test", "{target: real_test")))
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_here'"):
        load_study(_write(tmp_path, TINY_STUDY + "imports: [no_such_module_here]\n"))
    with pytest.raises(FileNotFoundError, match="Did you mean apoda_attacks_v4"):
        load_study("apoda_atacks_v4")
    with pytest.raises(ConfigError, match=r"no method 'apodaa' \(did you mean 'apoda'\?\)"):
        make_plan(load_study(_write(tmp_path, TINY_STUDY)), tmp_path, methods=["apodaa"])
    assert not list(tmp_path.glob("*/")), "nothing was created"


def test_a_base_study_is_replaced_key_by_key(tmp_path):
    _write(tmp_path, TINY_STUDY, "tiny.yaml")
    child = load_study(_write(tmp_path, "base: tiny.yaml\nmethods: {source_only: [method.name=source_only]}\n"
                                        "pairs: []\nseeds: [3, 4]\n", "child.yaml"))
    assert child.name == "child" and list(child.methods) == ["source_only"] and child.seeds == [3, 4]
    assert child.adaptation.iters == 24 and child.recipe == "synthetic_demo"  # kept from the base


def test_the_paper_study_checks_its_data_before_any_job_and_has_no_gpu_step_time_yet(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="missing before any run started: data.eval.cityscapes_val.root"):
        main(["run", "gta5_cityscapes_apoda", "--launcher", "slurm", "--work-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())
    study = load_study("gta5_cityscapes_apoda")
    plan = make_plan(study, tmp_path)
    assert len(plan.runs()) == 12 and plan.warm_starts() == [] and plan.iters == 150000
    run = plan.adaptation("apoda", False, 2)
    cfg = load_config(study.recipe, run.overrides)
    assert (cfg.train.iters, cfg.train.stop_at, cfg.model.backbone, cfg.method.name) == (250000, 150000, "resnet101",
                                                                                         "apoda")
    assert cfg.model.head_options["branches"] == 2  # AdaptSegNet's classifier as its code runs it
    text = dry_run_text(plan, 1, "slurm")
    assert text.splitlines()[0].startswith("study gta5_cityscapes_apoda: 12 runs; total unmeasured")
    assert "missing on this machine: " in text and "--set train.stop_at=150000" in text


def test_a_users_own_method_from_the_module_the_study_imports(tmp_path, monkeypatch):
    (tmp_path / "my_uda_methods_for_study.py").write_text(
        "import uda_perturb as up\nfrom uda_perturb.methods.source_only import SourceOnly\n\n\n"
        "@up.register_method('my_source_only')\nclass Mine(SourceOnly):\n    '''A user's method.'''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    text = TINY_STUDY.replace("  apoda: [method.name=apoda, 'method.options={ndf: 8}']\n",
                              "  mine: [method.name=my_source_only]\n").replace("apoda - source_only",
                                                                               "mine - source_only")
    path = _write(tmp_path, text + "imports: [my_uda_methods_for_study]\nadaptation: {iters: 2, batch: 2}\n")
    plan = make_plan(load_study(path), tmp_path / "w", methods=["mine"])
    assert "--import my_uda_methods_for_study" in dry_run_text(plan, 1)
    assert main(["run", str(path), "--methods", "mine", "--work-dir", str(tmp_path / "w")]) == 0
    run = plan.adaptation("mine", False, 0)
    assert json.loads((run.run_dir / "fingerprint.json").read_text())["config"]["method"]["name"] == "my_source_only"
    assert "mine" in json.loads((plan.work / "tiny.json").read_text())["results"]


def _children(pid):
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the job's process through /proc")
def test_the_slurm_launcher_gives_the_local_report_and_a_preempted_job_resumes_bit_identically(tmp_path, capsys):
    pytest.importorskip("submitit")
    from uda_perturb.study.launchers import slurm

    path = _write(tmp_path, TINY_STUDY)
    assert main(["run", str(path), "--work-dir", str(tmp_path / "local"), "--jobs", "2"]) == 0
    local = json.loads((tmp_path / "local" / "tiny" / "tiny.json").read_text())
    # the same study on "slurm" (submitit's local executor runs the jobs as processes here); the apoda job is
    # preempted mid-run (SIGUSR2, as SLURM signals before preemption), requeued, and resumes from its checkpoint
    plan = make_plan(load_study(path), tmp_path / "cluster")
    jobs = slurm(plan, build_parser().parse_args(["run", str(path)]), "local")
    run = plan.adaptation("apoda", False, 0)
    deadline = time.time() + 240
    while iteration(run) < 6 and time.time() < deadline:
        time.sleep(0.05)
    job = jobs[-1]  # the adaptation jobs follow the warm start's, in the plan's order: apoda is the last
    assert iteration(run) >= 6 and "running" in status_text(plan).splitlines()[-1]
    os.kill(_children(int(job.job_id))[0], signal.SIGUSR2)
    for j in jobs:
        j.result()
    log = (plan.work / "logs" / f"{run.run_dir.name}.log").read_text()
    assert "resuming from iteration" in log and "stopped by signal 15" in log
    mine = torch.load(run.run_dir / "segmentor.pt")
    theirs = torch.load(tmp_path / "local" / "tiny" / run.run_dir.name / "segmentor.pt")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    # the report from the cluster's runs equals the local one (results, pairs, costs aside)
    assert main(["report", str(path), "--work-dir", str(tmp_path / "cluster")]) == 0
    cluster = json.loads((tmp_path / "cluster" / "tiny" / "tiny.json").read_text())
    assert cluster["results"] == local["results"]
    assert cluster["paired_differences"] == local["paired_differences"]
    # status and the dry run read the finished runs: every run done, step times measured here
    assert status_text(plan).splitlines()[0].endswith("3 done; time left at 2 jobs: 0.00 h")
    assert "(measured here)" in dry_run_text(plan, 2) and "unmeasured" not in dry_run_text(plan, 2)


def test_the_slurm_launcher_without_submitit_names_the_extra(monkeypatch):
    import builtins

    from uda_perturb.study.launchers import require_submitit

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "submitit" else real(name, *a, **k))
    with pytest.raises(UserError, match=r"pip install 'uda-perturb\[cluster\]'"):
        require_submitit()


def test_the_readmes_study_file_loads_and_plans_on_v4s_runs(tmp_path):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Studies.*?```yaml\n(.*?)```", readme, re.S).group(1)
    study = load_study(_write(tmp_path, block, "my_attacks.yaml"))
    plan = make_plan(study, "runs/bench")
    assert study.name == "my_attacks" and plan.work == Path("runs/bench/compare_camvid_rendered_v4")
    v4 = make_plan(load_study("camvid_rendered_v4"), "runs/bench")
    assert plan.adaptation("apoda", True, 1).overrides == v4.adaptation("apoda", True, 1).overrides  # reused
    assert study.all_pairs() == [("apoda eps 0.2", "apoda")]


def test_a_speed_record_gives_the_dry_runs_gpu_hours(tmp_path):
    rows = [{"method": m, "step_s": s} for m, s in (("source_only", 0.5), ("adaptsegnet", 0.9), ("apoda", 1.0),
                                                    ("apoda+random", 0.95))]
    (tmp_path / "speed.json").write_text(json.dumps({"rows": rows}))
    study = load_study("gta5_cityscapes_apoda", [f"cost_record={tmp_path / 'speed.json'}"])
    text = dry_run_text(make_plan(study, tmp_path), 1, "slurm")
    hours = 3 * 150000 * (0.5 + 0.9 + 1.0 + 0.95) / 3600
    assert text.splitlines()[0].startswith(f"study gta5_cityscapes_apoda: 12 runs; total {hours:.2f} h over 1 GPU(s)")
    assert f"150000 iterations, {150000 * 1.0 / 3600:.2f} h (speed.json)" in text


def test_the_slurm_launcher_off_a_cluster_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun / sbatch on the path
    from uda_perturb.cli import main as cli

    assert cli(["study", "run", str(_write(tmp_path, TINY_STUDY)), "--launcher", "slurm", "--work-dir",
                str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uda-perturb: error: the slurm launcher: ") and "--cluster local" in err
    assert len(err.strip().splitlines()) == 1
