"""Checkpoint rules by value: the format tag literally, which config keys a resume may change (and that any
other key refuses), the fault-injection hook killing the process at the n-th save only when asked (and what it
leaves), RNG states with and without CUDA, and every refusal's text in full."""
import datetime
import io
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import raises_exactly

from uda_perturb.engine import checkpoint
from uda_perturb.engine.checkpoint import (
    FORMAT,
    config_differences,
    differing_keys,
    load_checkpoint,
    load_segmentor_state,
    read_torch_file,
    rng_state,
    save_atomic,
    set_rng_state,
)
from uda_perturb.errors import CheckpointError


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
    # the killed save left its temporary file beside the checkpoint, cut to half the bytes torch.save writes
    left = list(tmp_path.glob(".c.pt.*"))
    whole = io.BytesIO()
    torch.save({"i": torch.tensor(1)}, whole)
    assert len(left) == 1 and left[0].stat().st_size == len(whole.getvalue()) // 2
    env.pop("UDA_PERTURB_KILL_IN_SAVE")
    clean = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert clean.returncode == 0 and clean.stdout.split() == ["0", "1", "2"]
    assert not list(tmp_path.glob(".c.pt.*"))  # the next save removed it
    assert checkpoint._SAVES == [0]  # this process never counted a save


def test_cuda_rng_states_are_saved_and_restored_when_cuda_is_there(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["gpu0"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = rng_state()
    assert state["cuda"] == ["gpu0"]
    set_rng_state(state)
    assert restored == [["gpu0"]]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "cuda" not in rng_state()
    set_rng_state(state)  # a GPU checkpoint resumed on a CPU machine: nothing to restore the GPU states to
    assert restored == [["gpu0"]]


def test_rng_states_round_trip():
    state = rng_state()
    a = (torch.rand(3), np.random.rand(), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_save_atomic_makes_missing_folders(tmp_path):
    path = save_atomic({"x": torch.ones(2)}, tmp_path / "a" / "b" / "c.pt")
    assert path == tmp_path / "a" / "b" / "c.pt" and torch.equal(read_torch_file(path)["x"], torch.ones(2))


def test_read_torch_file_accepts_both_formats_and_refuses_others_with_their_reasons(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"x": torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:1] == b"\x80" and torch.equal(read_torch_file(legacy)["x"], torch.ones(1))
    with raises_exactly(FileNotFoundError, f"checkpoint not found: {tmp_path / 'no.pt'}"):
        read_torch_file(tmp_path / "no.pt")
    foreign = tmp_path / "notes.pt"
    foreign.write_bytes(b"hello, not a checkpoint")
    with raises_exactly(CheckpointError,
                        f"checkpoint {foreign} is not a torch file (a run's checkpoint.pt or segmentor.pt)"):
        read_torch_file(foreign)
    cut = tmp_path / "cut.pt"
    save_atomic({"x": torch.ones(100)}, cut)
    cut.write_bytes(cut.read_bytes()[:200])
    try:
        torch.load(cut, weights_only=True)
    except Exception as exc:  # the first line of torch's own reason is quoted
        reason = str(exc).strip().splitlines()[0]
    assert reason and reason != "None"
    with raises_exactly(CheckpointError, f"checkpoint {cut} is truncated or not a torch file ({reason})"):
        read_torch_file(cut)
    pickled = tmp_path / "pickled.pt"
    torch.save({"when": datetime.date(2026, 1, 1)}, pickled)
    with raises_exactly(CheckpointError,
                        f"checkpoint {pickled} holds objects other than tensors and plain containers; it was "
                        "refused for safety (unpickling them could run code). Re-save it as a state dict of tensors"):
        read_torch_file(pickled)


def test_a_state_dict_is_not_a_trainer_checkpoint_and_another_config_is_named(tmp_path):
    weights = save_atomic({"w": torch.ones(1)}, tmp_path / "segmentor.pt")
    with raises_exactly(CheckpointError, f"checkpoint {weights} was not written by uda_perturb's trainer (no format "
                        f"'uda_perturb-checkpoint-v1' record); a segmentor state dict loads with 'eval'/'predict'"):
        load_checkpoint(weights)
    ckpt = save_atomic({"format": FORMAT, "config": {"train": {"lr": 0.1, "iters": 5}, "seed": 0}},
                       tmp_path / "checkpoint.pt")
    assert load_checkpoint(ckpt, {"train": {"lr": 0.1, "iters": 9}, "seed": 0})["format"] == FORMAT
    with raises_exactly(CheckpointError, f"checkpoint {ckpt} comes from another config: seed: checkpoint 0 vs "
                        "config 1; train.lr: checkpoint 0.1 vs config 0.2"):
        load_checkpoint(ckpt, {"train": {"lr": 0.2, "iters": 5}, "seed": 1})


def test_another_config_names_at_most_eight_keys(tmp_path):
    ckpt = save_atomic({"format": FORMAT, "config": {f"k{i}": 0 for i in range(10)}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt, {f"k{i}": 1 for i in range(10)})
    named = re.findall(r"k\d: checkpoint 0 vs config 1", str(info.value))
    assert named == [f"k{i}: checkpoint 0 vs config 1" for i in range(8)]


def test_a_segmentor_state_dict_must_be_non_empty_tensors(tmp_path):
    for bad in ({}, {"w": torch.ones(1), "step": 3}):
        path = save_atomic(bad, tmp_path / "w.pt")
        with raises_exactly(CheckpointError,
                            f"checkpoint {path} is neither a trainer checkpoint nor a segmentor state dict"):
            load_segmentor_state(path)
    ckpt = save_atomic({"format": FORMAT, "method": {"segmentor.w": torch.ones(1), "disc.w": torch.zeros(1)}},
                       tmp_path / "c.pt")
    assert list(load_segmentor_state(ckpt)) == ["w"]
