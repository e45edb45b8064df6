"""Checkpoint rules by value: the format tag literally, which config keys a resume may change (and that any
other key refuses), and the fault-injection hook killing the process at the n-th save only when asked."""
import os
import subprocess
import sys

from uda_perturb.engine import checkpoint
from uda_perturb.engine.checkpoint import FORMAT, config_differences, differing_keys


def test_format_tag_and_the_keys_a_resume_may_change():
    assert FORMAT == "uda_perturb-checkpoint-v1"
    saved = {"train": {"iters": 10, "stop_at": None, "eval_every": 5, "checkpoint_every": 2, "log_every": 1,
                       "lr": 0.1},
             "data": {"num_workers": 0, "batch_size": 2}, "device": "cpu", "eval": {"size": [4, 4]}}
    changed = {"train": {"iters": 20, "stop_at": 15, "eval_every": 10, "checkpoint_every": 4, "log_every": 5,
                         "lr": 0.1},
               "data": {"num_workers": 2, "batch_size": 2}, "device": "cuda", "eval": {"size": [8, 8]}}
    assert config_differences(saved, changed) == []
    changed["train"]["lr"], changed["data"]["batch_size"] = 0.2, 4
    assert config_differences(saved, changed) == ["data.batch_size", "train.lr"]


def test_differing_keys_sorts_leaves_out_allowed_subtrees_and_counts_missing_keys():
    a = {"b": {"x": 1, "y": [1, 2]}, "a": 1, "evalx": 0, "eval": {"size": 4}}
    b = {"b": {"x": 2, "y": [1, 2]}, "a": 1, "evalx": 1, "eval": {"size": 8}, "new": 0, "unset": None}
    # a key absent on one side differs from one present, unless it holds None; "evalx" is not under "eval"
    assert differing_keys(a, b) == ["b.x", "eval.size", "evalx", "new"]
    assert differing_keys(a, b, ("eval", "b.x")) == ["evalx", "new"]
    assert differing_keys(a, a) == []


def test_the_fault_hook_kills_at_the_nth_save_only_when_asked(tmp_path):
    code = ("import torch\nfrom uda_perturb.engine.checkpoint import save_atomic\n"
            "for i in range(3):\n    save_atomic({'i': torch.tensor(i)}, r'%s')\n    print(i, flush=True)\n"
            % (tmp_path / "c.pt"))
    env = {**os.environ, "UDA_PERTURB_KILL_IN_SAVE": "2", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert killed.returncode == -9 and killed.stdout.split() == ["0"]
    env.pop("UDA_PERTURB_KILL_IN_SAVE")
    clean = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert clean.returncode == 0 and clean.stdout.split() == ["0", "1", "2"]
    assert checkpoint._SAVES == [0]  # this process never counted a save
