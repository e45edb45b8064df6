"""Training runs of a benchmark: each run is a subprocess ``python -m uda_perturb train ...`` (one thread
each, ``jobs`` at a time), so runs are isolated and a restarted benchmark skips runs whose ``results.json``
exists."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

PHOTOMETRIC_KEYS = ("data.source.transforms.photometric", "data.target.transforms.photometric")


def photometric(on: bool) -> list[str]:
    """Overrides that switch photometric augmentation on or off for both training domains."""
    return [f"{k}={str(on).lower()}" for k in PHOTOMETRIC_KEYS]


@dataclass
class Run:
    """One training run of the benchmark: a label, recipe overrides, and where it writes."""

    label: str
    overrides: list[str]
    run_dir: Path
    seed: int = 0

    def done(self) -> bool:
        """Whether the run already finished (its results file exists)."""
        return (self.run_dir / "results.json").is_file()

    def record(self) -> dict:
        """The finished run's ``results.json``: final ``results`` per split and its ``train_seconds``."""
        return json.loads((self.run_dir / "results.json").read_text())


def launch(recipe: str, run: Run, log_dir: Path, threads: int = 1) -> float:
    """Train one run in a subprocess unless it already finished; returns its wall time in seconds."""
    if run.done():
        return 0.0
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "uda_perturb", "train", recipe, "--run-dir", str(run.run_dir), "--no-progress",
           "--overwrite"]
    for o in run.overrides + [f"seed={run.seed}"]:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.time()
    with open(log_dir / f"{run.run_dir.name}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"run {run.run_dir.name} failed (exit {proc.returncode}); see {log_dir}")
    return time.time() - start


def run_all(recipe: str, runs: Sequence[Run], jobs: int, log_dir: Path) -> float:
    """Run everything, ``jobs`` at a time; returns the wall time."""
    start = time.time()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for fut in [pool.submit(launch, recipe, r, log_dir) for r in runs]:
            fut.result()
    return time.time() - start


def load_results(run: Run) -> dict:
    """The final evaluation results of a finished run."""
    return run.record()["results"]


def train_seconds(runs: Sequence[Run]) -> float:
    """Training compute of finished runs: the sum of their ``train_seconds`` records."""
    return sum(r.record().get("train_seconds", 0.0) for r in runs)
