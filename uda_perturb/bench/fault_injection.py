"""Fault injection (``benchmarks/fault_injection.py``): SIGKILL a training run at random points, including
half-way through a checkpoint save, resume it after each kill, and compare its final state with an
uninterrupted run of the same config: every tensor must be bit-identical. The same under ``torchrun`` with 2
CPU processes (gloo), killing the whole process group.

    python benchmarks/fault_injection.py                     # 10 kills single-process, 4 under torchrun
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .report import add_results_options, check_replace, environment, results_folder, write_results

TINY = ["model.backbone_options={width: 8}", "model.head=conv1x1", "model.head_options={}", "data.batch_size=2",
        "data.source.options={domain: source, size: [32, 48], length: 16}",
        "data.target.options={domain: target, size: [32, 48], length: 16}", "data.eval={}", "train.log_every=1"]


def command(run_dir: Path, method: str, iters: int, every: int, ddp: bool, resume: bool) -> list[str]:
    """``uda-perturb train`` (under torchrun with 2 processes when ``ddp``) of the tiny synthetic config."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if ddp
                else [sys.executable])
    cmd = launcher + ["-m", "uda_perturb", "train", "synthetic_demo", "--run-dir", str(run_dir), "--no-progress"]
    for o in TINY + [f"method.name={method}", f"train.iters={iters}", f"train.checkpoint_every={every}",
                     "device=cpu"] + (["method.options={ndf: 4}"] if method in ("apoda", "adaptsegnet") else []):
        cmd += ["--set", o]
    return cmd + (["--resume", "--allow-fresh"] if resume else [])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc): torchrun starts its workers in sessions of their own, so
    killing its process group would leave them training."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant at once."""
    for p in process_tree(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def logged_iteration(run_dir: Path) -> int:
    """The last iteration in the run's metrics log (0 when there is none yet)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return int(json.loads(lines[-1])["iteration"]) if lines else 0
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def run(cmd: list[str], run_dir: Path, kill_at: Optional[int] = None, delay: float = 0.0,
        kill_in_save: Optional[int] = None) -> str:
    """Run ``cmd`` in its own process group. ``kill_at``: SIGKILL the whole group ``delay`` seconds after the
    metrics log reaches that iteration (so mid-step); ``kill_in_save``: the trainer SIGKILLs itself half-way
    through its ``kill_in_save``-th checkpoint save. Returns how it ended."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kill_in_save:
        env["UDA_PERTURB_KILL_IN_SAVE"] = str(kill_in_save)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(run_dir.parent / f"{run_dir.name}.log", "a")  # every segment's output, for the curious
    log.write(f"\n$ {' '.join(cmd)}  (kill_at={kill_at}, kill_in_save={kill_in_save})\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    while proc.poll() is None:
        if kill_at is not None and logged_iteration(run_dir) >= kill_at:
            time.sleep(delay)
            kill_tree(proc.pid)
            proc.wait()
            log.close()
            return f"killed after iteration {kill_at}"
        time.sleep(0.005)
    log.close()
    if proc.returncode != 0:
        kill_tree(proc.pid)  # torchrun's other worker, if the killed rank left one
    return "finished" if proc.returncode == 0 else f"killed in a save (exit {proc.returncode})"


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The method state (segmentor, discriminators, teacher) of a finished run's last checkpoint."""
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["method"]


def trial(work: Path, method: str, iters: int, every: int, kills: int, ddp: bool, rng: random.Random) -> dict:
    """One uninterrupted run, and one killed ``kills`` times (a third of them inside a checkpoint save)."""
    ref, hurt = work / f"{method}{'_ddp' if ddp else ''}_reference", work / f"{method}{'_ddp' if ddp else ''}_killed"
    start = time.time()
    assert run(command(ref, method, iters, every, ddp, False), ref) == "finished", "reference run failed"
    duration = time.time() - start
    # kill points spread over the run: k-th kill at a random iteration of the k-th slice, a third in a save
    edges = [round(iters * k / kills) for k in range(kills + 1)]
    events = []
    for k in range(kills):
        cmd = command(hurt, method, iters, every, ddp, resume=True)
        if k % 3 == 2:
            how = run(cmd, hurt, kill_in_save=1)
            events.append({"kill": "inside the next checkpoint save", "ended": how})
        else:
            at, delay = rng.randint(max(edges[k], 1), max(edges[k + 1] - 1, 1)), rng.uniform(0.0, 0.05)
            how = run(cmd, hurt, kill_at=at, delay=delay)
            events.append({"kill": f"{delay * 1000:.0f} ms after iteration {at} was logged", "ended": how})
    resumes = len(events)
    while run(command(hurt, method, iters, every, ddp, resume=True), hurt) != "finished":
        resumes += 1
        if resumes > kills + 3:
            raise RuntimeError(f"{hurt} does not finish after its kills")
    a, b = final_state(ref), final_state(hurt)
    differing = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
    return {"method": method, "ddp": ddp, "iters": iters, "checkpoint_every": every, "events": events,
            "killed": sum(e["ended"].startswith("killed") for e in events),
            "tensors": len(a), "differing_tensors": differing, "bit_identical": not differing and a.keys() == b.keys(),
            "reference_seconds": round(duration, 1)}


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    """Run the trials and write ``fault_injection.md/.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["dacs"], help="methods to kill (dacs: teacher, mixing, RNG)")
    ap.add_argument("--iters", type=int, default=24)
    ap.add_argument("--checkpoint-every", type=int, default=3)
    ap.add_argument("--kills", type=int, default=10, help="kills of the single-process run")
    ap.add_argument("--ddp-kills", type=int, default=4, help="kills of the torchrun run (0: skip it)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--work-dir", default="runs/fault_injection")
    add_results_options(ap)
    args = ap.parse_args(argv)
    out = results_folder(args, results_dir)
    check_replace(args, out, "fault_injection")
    rng = random.Random(args.seed)
    work = Path(args.work_dir)
    if work.exists():
        import shutil

        shutil.rmtree(work)
    trials = []
    for method in args.methods:
        for ddp, kills in ((False, args.kills), (True, args.ddp_kills)):
            if kills:
                trials.append(trial(work, method, args.iters, args.checkpoint_every, kills, ddp, rng))
                print(f"{method}{' (torchrun, 2 processes)' if ddp else ''}: {trials[-1]['killed']} kills, "
                      f"bit-identical: {trials[-1]['bit_identical']}", flush=True)
    md = ["# Fault injection: SIGKILL, resume, compare with an uninterrupted run", "",
          f"Tiny synthetic config, {args.iters} iterations, a checkpoint every {args.checkpoint_every}; each kill is "
          "followed by `--resume --allow-fresh` (a kill before the first checkpoint restarts from 0); one kill in "
          "three lands half-way through writing a checkpoint (`UDA_PERTURB_KILL_IN_SAVE`). Final state compared "
          "tensor by tensor (segmentor, discriminators, EMA teacher).", "",
          "| method | launcher | kills | tensors | bit-identical | differing |", "|---|---|---|---|---|---|"]
    for t in trials:
        md.append(f"| {t['method']} | {'torchrun x2 (gloo)' if t['ddp'] else 'single process'} | {t['killed']} | "
                  f"{t['tensors']} | {'**yes**' if t['bit_identical'] else 'NO'} | "
                  f"{', '.join(t['differing_tensors'][:3]) or '-'} |")
    md += ["", "Kill schedule:", ""] + [f"- {t['method']}{' (torchrun)' if t['ddp'] else ''}: "
                                        + "; ".join(f"{e['kill']} ({e['ended']})" for e in t["events"])
                                        for t in trials]
    write_results(out, "fault_injection", {"environment": environment(), "trials": trials}, "\n".join(md))
    print("\n".join(md))
    return 0 if all(t["bit_identical"] for t in trials) else 1
