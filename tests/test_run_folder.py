"""Run-folder safety and honest resume: --overwrite replaces only a run's files, --resume says where it
resumes and refuses a folder without a checkpoint, the metrics log is cut back to the checkpoint, a finished
run is not re-run, train seconds add up over segments, stale save temporaries go, SIGTERM exits 143."""
import json
import os
import signal

import pytest
import torch
from helpers import die_during_step, tiny_config

from uda_perturb.cli import main
from uda_perturb.engine import Trainer
from uda_perturb.engine.checkpoint import save_atomic


def records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_overwrite_refuses_a_folder_with_foreign_files_and_keeps_them(tmp_path):
    run = tmp_path / "r"
    Trainer(tiny_config("source_only", "train.iters=1"), run, progress=False).fit()
    (run / "precious.txt").write_text("keep me")
    (run / "sub").mkdir()
    (run / "sub" / "notes.md").write_text("keep me too")
    with pytest.raises(FileExistsError, match=r"precious.txt, sub/"):
        Trainer(tiny_config("source_only", "train.iters=1"), run, overwrite=True, progress=False)
    assert (run / "precious.txt").read_text() == "keep me" and (run / "sub" / "notes.md").is_file()
    (run / "precious.txt").unlink()
    (run / "sub" / "notes.md").unlink()
    (run / "sub").rmdir()
    (run / ".checkpoint.pt.abc123").write_bytes(b"half")  # a stale save temporary counts as a run file
    Trainer(tiny_config("source_only", "train.iters=1"), run, overwrite=True, progress=False)
    assert not (run / "metrics.jsonl").exists() and not (run / ".checkpoint.pt.abc123").exists()


def test_resume_without_checkpoint_is_an_error_unless_allowed(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no checkpoint.*--allow-fresh"):
        Trainer(tiny_config("source_only", "train.iters=1"), tmp_path / "r", resume=True, progress=False)
    t = Trainer(tiny_config("source_only", "train.iters=1"), tmp_path / "r", resume=True, allow_fresh=True,
                progress=False)
    assert t.iteration == 0


def test_resume_logs_truncates_metrics_and_sums_train_seconds(tmp_path, capsys):
    run = tmp_path / "r"
    extra = ["train.iters=6", "train.checkpoint_every=2"]
    t = Trainer(tiny_config("source_only", *extra), run, progress=False)
    die_during_step(t, 4)  # after iteration 3 was logged, with the checkpoint at 2
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert [r["iteration"] for r in records(run)] == [1, 2, 3]
    resumed = Trainer(tiny_config("source_only", *extra), run, resume=True, progress=False)
    assert "resuming from iteration 2 of 6" in capsys.readouterr().err
    assert [r["iteration"] for r in records(run)] == [1, 2]
    before = torch.load(run / "checkpoint.pt", weights_only=True)["train_seconds"]
    resumed.fit()
    its = [r["iteration"] for r in records(run) if "eval" not in r]
    assert its == [1, 2, 3, 4, 5, 6]
    times = [r["time"] for r in records(run) if "eval" not in r]
    assert times == sorted(times) and times[2] >= before  # time continues instead of restarting at 0
    total = json.loads((run / "results.json").read_text())["train_seconds"]
    assert total >= before and total >= times[-1] - 1e-6
    cpu_before = torch.load(run / "checkpoint.pt", weights_only=True)["train_cpu_seconds"]
    assert cpu_before is not None and cpu_before > 0
    cpu = json.loads((run / "results.json").read_text())["train_cpu_seconds"]
    assert cpu >= cpu_before  # the record counts the whole run, final checkpoint included


def test_cpu_time_is_summed_over_segments_and_unknown_after_a_checkpoint_without_it(tmp_path):
    """Each segment adds its own process-time difference to what the checkpoint carried."""
    run = tmp_path / "r"
    extra = ["train.iters=4", "train.checkpoint_every=2"]
    t = Trainer(tiny_config("source_only", *extra), run, progress=False)
    die_during_step(t, 3)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    first = torch.load(run / "checkpoint.pt", weights_only=True)["train_cpu_seconds"]
    resumed = Trainer(tiny_config("source_only", *extra), run, resume=True, progress=False)
    assert resumed.train_cpu_seconds == first
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("time.process_time", lambda: 1000.0)  # a second segment that takes no CPU time at all
        resumed.fit()
    assert json.loads((run / "results.json").read_text())["train_cpu_seconds"] == first  # the first's, no more
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["train_cpu_seconds"]  # a checkpoint written before CPU time was recorded
    ckpt["iteration"] = 2
    torch.save(ckpt, run / "checkpoint.pt")
    (run / "results.json").unlink()
    old = Trainer(tiny_config("source_only", *extra), run, resume=True, progress=False)
    assert old.train_cpu_seconds is None
    old.fit()
    assert json.loads((run / "results.json").read_text())["train_cpu_seconds"] is None  # unknown, not a part


def test_resuming_a_finished_run_does_nothing(tmp_path, capsys):
    run = tmp_path / "r"
    Trainer(tiny_config("source_only", "train.iters=2"), run, progress=False).fit()
    n = len(records(run))
    results = Trainer(tiny_config("source_only", "train.iters=2"), run, resume=True, progress=False).fit()
    assert "already finished at iteration 2" in capsys.readouterr().err
    assert len(records(run)) == n and results == json.loads((run / "results.json").read_text())["results"]


def test_stale_save_temporaries_are_removed_at_the_next_save(tmp_path):
    (tmp_path / ".c.pt.dead1").write_bytes(b"x" * 100)
    save_atomic({"a": torch.ones(1)}, tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_sigterm_exits_143_from_the_cli(tmp_path, monkeypatch):
    from uda_perturb.engine import trainer as trainer_mod

    original = trainer_mod.Trainer.train_step

    def step(self, *a):
        if self.iteration == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *a)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step)
    sets = ["--set", "train.iters=5", "--set", "model.backbone_options={width: 8}", "--set", "data.eval={}"]
    assert main(["train", "synthetic_demo", *sets, "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 143
