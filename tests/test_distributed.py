"""Two CPU processes (gloo): gradients averaged so every rank ends with identical weights, and the
evaluation histogram is summed across ranks (each rank scores a disjoint share)."""
import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from helpers import ddp_init_state, ddp_worker


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method", ["apoda", "dacs"])
def test_two_process_gloo_training_keeps_ranks_identical(tmp_path, method):
    mp.spawn(ddp_worker, args=(2, free_port(), str(tmp_path / "run"), str(tmp_path), method), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:  # weights through averaged gradients, BN statistics through rank 0's broadcast
        assert torch.equal(a[k], b[k]), f"{k} differs across ranks"
    init = ddp_init_state(method)
    assert not torch.equal(a["segmentor.head.conv.weight"], init["segmentor.head.conv.weight"])
    if method == "dacs":  # the EMA teacher ran on the synchronised weights: identical on both ranks, and moved
        assert not torch.equal(a["teacher.model.head.conv.weight"], init["teacher.model.head.conv.weight"])
    ra = json.loads((tmp_path / "rank0.json").read_text())
    rb = json.loads((tmp_path / "rank1.json").read_text())
    assert ra == rb and ra["t"]["miou"] is not None
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_two_process_resume_restores_each_ranks_rng_and_is_bit_exact(tmp_path):
    from helpers import ddp_resume_worker

    # DACS draws ClassMix masks and jitter from each rank's own RNG; a resume must restore every rank's
    extra = ["train.iters=4", "train.checkpoint_every=2"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mp.spawn(ddp_resume_worker, args=(2, free_port(), str(tmp_path / "full"), str(tmp_path / "a"), extra, False),
             nprocs=2, join=True)
    mp.spawn(ddp_resume_worker, args=(2, free_port(), str(tmp_path / "part"), "", extra + ["train.stop_at=2"],
                                      False), nprocs=2, join=True)
    ckpt = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert len(ckpt["rng_per_rank"]) == 2
    assert not torch.equal(ckpt["rng_per_rank"][0]["torch"], ckpt["rng_per_rank"][1]["torch"])
    mp.spawn(ddp_resume_worker, args=(2, free_port(), str(tmp_path / "part"), str(tmp_path / "b"), extra, True),
             nprocs=2, join=True)
    a, b = torch.load(tmp_path / "a" / "rank0.pt", weights_only=True), torch.load(tmp_path / "b" / "rank0.pt",
                                                                                   weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after a 2-process resume"
