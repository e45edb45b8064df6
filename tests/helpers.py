"""Tiny experiment configs shared by the engine tests."""
from uda_perturb.config import load_config

TINY = [
    "model.backbone_options={width: 8}", "model.head=conv1x1", "model.head_options={}",
    "data.batch_size=2",
    "data.source.options={domain: source, size: [32, 48], length: 16}",
    "data.target.options={domain: target, size: [32, 48], length: 16}",
    "data.eval={}", "train.log_every=1", "train.checkpoint_every=0",
]


def tiny_config(method="source_only", *extra):
    return load_config("synthetic_demo", TINY + [f"method.name={method}", *extra])


def die_during_step(trainer, n: int) -> None:
    """Make ``trainer.fit()`` raise KeyboardInterrupt on its ``n``-th step, as a run killed mid-step (SIGKILL)
    leaves its folder: the iterations before logged, the last checkpoint on disk."""
    original, calls = trainer.train_step, []

    def step(*a):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return original(*a)

    trainer.train_step = step


def method_options(method: str) -> str:
    """Small discriminators for the adversarial methods; the others take no options here."""
    return "method.options={ndf: 4}" if method in ("apoda", "adaptsegnet", "advent") else "method.options={}"


def ddp_worker(rank: int, world: int, port: int, run_dir: str, out_dir: str, method: str = "apoda") -> None:
    """One rank of a 2-process gloo job: train 2 iterations, save its final weights and eval results."""
    import json
    import os

    import torch

    from uda_perturb.engine import Trainer

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    evals = "data.eval={t: {name: synthetic, split: test, options: {domain: target, size: [32, 48], length: 5}}}"
    cfg = tiny_config(method, "train.iters=2", method_options(method), "device=cpu", evals)
    trainer = Trainer(cfg, run_dir, progress=False)
    results = trainer.fit()
    torch.save(trainer.method.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({k: {kk: vv for kk, vv in v.items() if kk != "table"} for k, v in results.items()}, fh)
    trainer.close()


def ddp_init_state(method: str = "apoda"):
    """The weights the DDP job starts from (built with the same seed in this process)."""
    import torch

    from uda_perturb.engine import build_model
    from uda_perturb.methods import build_method

    cfg = tiny_config(method, "train.iters=2", method_options(method))
    torch.manual_seed(cfg.seed)
    return build_method(method, build_model(cfg), [], cfg.method.options).state_dict()


def assert_resume_is_bit_exact(tmp_path, method: str, extra, stop: int = 2):
    """Train ``extra``'s iterations in one go and, in another folder, to ``stop`` then resumed; every tensor of
    the method's state (segmentor, discriminators, teacher) must be equal. Returns both trainers."""
    import torch

    from uda_perturb.engine import Trainer

    full = Trainer(tiny_config(method, *extra), tmp_path / "full", progress=False)
    full.fit()
    Trainer(tiny_config(method, *extra, f"train.stop_at={stop}"), tmp_path / "part", progress=False).fit()
    resumed = Trainer(tiny_config(method, *extra), tmp_path / "part", resume=True, progress=False)
    assert resumed.iteration == stop
    resumed.fit()
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    return full, resumed


def ddp_resume_worker(rank: int, world: int, port: int, run_dir: str, out: str, extra: list, resume: bool) -> None:
    """One rank of a 2-process gloo job that trains (or resumes) ``extra``'s run and saves its final state."""
    import os

    import torch

    from uda_perturb.engine import Trainer

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    trainer = Trainer(tiny_config("dacs", *extra, "device=cpu"), run_dir, resume=resume, progress=False)
    if rank == 1 and not resume:  # ranks' RNGs diverge as soon as their images differ in class count; do it now
        torch.rand(1)
    trainer.fit()
    if out:
        torch.save(trainer.method.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    trainer.close()


def raises_exactly(exc: type, text: str):
    """``pytest.raises(exc)`` matching the whole message, literally (a changed or extended text fails)."""
    import re

    import pytest

    return pytest.raises(exc, match="^" + re.escape(text) + "$")


def benchmark_module(name: str):
    """A module of ``benchmarks/`` that is not part of the package (the mutation-testing tools), by its path under
    ``benchmarks/``, e.g. ``"mutation_testing/mutation"``."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(name.replace("/", "."))
