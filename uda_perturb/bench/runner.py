"""Training runs of a benchmark: each run is a subprocess ``python -m uda_perturb train ...`` (one thread
each, ``jobs`` at a time), so runs are isolated. A finished run records its fingerprint (resolved config and the
content of its start weights); a restarted benchmark reuses a folder only when that fingerprint equals the
requested run's, and trains it again otherwise. A run cut off (a benchmark stopped, a session ended) continues
from its last checkpoint when its folder was started for this very run, so a benchmark longer than one sitting
is finished by restarting it."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from ..engine.checkpoint import differing_keys
from ..engine.run_folder import clear_run

PHOTOMETRIC_KEYS = ("data.source.transforms.photometric", "data.target.transforms.photometric")


def photometric(on: bool) -> list[str]:
    """Overrides that switch photometric augmentation on or off for both training domains."""
    return [f"{k}={str(on).lower()}" for k in PHOTOMETRIC_KEYS]


# the training process of the run this process launched last: a cluster job's preemption handler stops it
# (SIGTERM: it writes a checkpoint first) before the job is requeued
CHILD: Optional[subprocess.Popen] = None
FINGERPRINT = "fingerprint.json"
STARTED = "fingerprint.started.json"  # written when a run starts: a folder cut off mid-run may resume only as it
# keys that do not change what a run computes: a checkpoint cadence (resume is bit-exact), and the start weights'
# path, whose content the fingerprint holds (weights_sha256), so a work folder named relatively, absolutely or
# moved keeps its finished runs instead of training them again
RESULT_NEUTRAL = ("config.train.checkpoint_every", "config.model.weights")


def file_sha256(path: Path) -> Optional[str]:
    """SHA-256 of a file's bytes, ``None`` when it does not exist (yet)."""
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Run:
    """One training run of the benchmark: a label, recipe overrides, and where it writes."""

    label: str
    overrides: list[str]
    run_dir: Path
    seed: int = 0
    imports: Sequence[str] = ()  # modules registering a user's methods, imported by the training process

    def fingerprint(self, recipe: str) -> dict[str, Any]:
        """What the run is: its resolved config (method, options, iterations, lr, seed, data...) and the content
        of the weights it starts from (a warm start redone with other settings changes it)."""
        from ..config import load_config, to_dict

        cfg = to_dict(load_config(recipe, self.overrides + [f"seed={self.seed}"]))
        weights = cfg["model"].get("weights")
        return {"config": cfg, "weights_sha256": file_sha256(Path(weights)) if weights else None}

    def differences(self, recipe: str, want: Optional[dict] = None) -> Optional[list[str]]:
        """``None`` when the folder holds no finished run; else the settings (dotted keys) in which the finished
        run differs from this one (empty: it is this run). ``want``: this run's :meth:`fingerprint`, when the
        caller has it already (it loads the config and hashes the start weights)."""
        if not (self.run_dir / "results.json").is_file():
            return None
        stored_file = self.run_dir / FINGERPRINT
        if not stored_file.is_file():
            return ["(no fingerprint: made before runs recorded their settings)"]
        return differing_keys(json.loads(stored_file.read_text()), want or self.fingerprint(recipe), RESULT_NEUTRAL)

    def resumable(self, recipe: str, want: Optional[dict] = None) -> bool:
        """Whether the folder holds this very run cut off before its end, with a checkpoint to continue from
        (``want`` as in :meth:`differences`)."""
        started = self.run_dir / STARTED
        return (not (self.run_dir / "results.json").is_file() and (self.run_dir / "checkpoint.pt").is_file()
                and started.is_file()
                and differing_keys(json.loads(started.read_text()), want or self.fingerprint(recipe),
                                   RESULT_NEUTRAL) == [])

    def done(self, recipe: str) -> bool:
        """Whether the folder holds this very run, finished (same resolved config, same start weights)."""
        return self.differences(recipe) == []

    def record(self) -> dict:
        """The finished run's ``results.json``: final ``results`` per split and its ``train_seconds``."""
        return json.loads((self.run_dir / "results.json").read_text())


def lock_path(run_dir: Path) -> Path:
    """The lock file of a run folder: beside it, since a run folder holds only what a run writes."""
    return run_dir.parent / f".{run_dir.name}.lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold a run folder for this process. Two benchmark commands sharing a work folder (a comparison and an
    ablation that reuses its runs) would otherwise train one run in one folder at once; the second waits here
    until the first has finished the run (it then reuses it) or been cut off (it then resumes it). The OS
    releases the lock when its holder dies, so it is never stale. Without ``fcntl`` (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - POSIX here
        yield
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path(run_dir), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{run_dir}: another process is training this run; waiting for it", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def launch(recipe: str, run: Run, log_dir: Path, threads: int = 1) -> float:
    """Train one run in a subprocess unless its folder holds this very run finished; continue it from its
    checkpoint when the folder holds this very run cut off; a folder holding a run made with other settings is
    retrained (the differing keys are printed). The folder is held (:func:`run_lock`) from the check to the
    end of training. Returns the wall time in seconds."""
    with run_lock(run.run_dir):
        return _launch_locked(recipe, run, log_dir, threads)


def _launch_locked(recipe: str, run: Run, log_dir: Path, threads: int) -> float:
    want = run.fingerprint(recipe)
    diff = run.differences(recipe, want)
    if diff == []:
        return 0.0
    if diff:
        shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
        print(f"{run.run_dir}: holds a run made with other settings ({shown}); training it again", flush=True)
    resume = run.resumable(recipe, want)
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = train_command(recipe, run) + ["--no-progress"]
    if resume:
        cmd.append("--resume")
    else:  # cleared here (a folder holding files no run writes is refused), then marked as started for this run
        clear_run(run.run_dir)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / STARTED).write_text(json.dumps(want, indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.time()
    global CHILD
    with open(log_dir / f"{run.run_dir.name}.log", "a" if resume else "w") as log:
        CHILD = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        code = CHILD.wait()
    if code != 0:
        raise RuntimeError(f"run {run.run_dir.name} failed (exit {code}); see {log_dir}")
    (run.run_dir / FINGERPRINT).write_text(json.dumps(want, indent=1))
    return time.time() - start


def train_command(recipe: str, run: Run) -> list[str]:
    """The command line that trains ``run`` (its user modules imported first)."""
    cmd = [sys.executable, "-m", "uda_perturb", "train", recipe, "--run-dir", str(run.run_dir)]
    cmd += [a for m in run.imports for a in ("--import", m)]
    return cmd + [a for o in run.overrides + [f"seed={run.seed}"] for a in ("--set", o)]


def start_weights(run: Run) -> Optional[str]:
    """The ``model.weights`` a run starts from (its last such override), ``None`` when it has none."""
    found = [o.split("=", 1)[1] for o in run.overrides if o.startswith("model.weights=")]
    return found[-1] if found else None


def run_all(recipe: str, runs: Sequence[Run], jobs: int, log_dir: Path, threads: int = 1) -> float:
    """Run everything, ``jobs`` at a time with ``threads`` torch threads each, printing one line per run as it
    finishes; returns the wall time. A run that starts from the weights another run of the list writes (an
    adaptation run and its warm start) waits for that run only, so no core idles while the last warm start
    trains; such a run must come after the one it waits for."""
    made_by = {str(r.run_dir / "segmentor.pt"): i for i, r in enumerate(runs)}
    needs: list[Optional[int]] = []
    for i, r in enumerate(runs):
        dep = made_by.get(str(start_weights(r)))
        if dep is not None and dep >= i:
            raise ValueError(f"{r.run_dir.name} starts from {runs[dep].run_dir.name}, which comes after it in the list")
        needs.append(dep)
    futures: list[Future] = []

    def task(i: int) -> float:
        dep = needs[i]
        if dep is not None:  # submitted earlier, so a worker holds it or has finished it: no deadlock
            futures[dep].result()  # re-raises its failure
        return launch(recipe, runs[i], log_dir, threads)

    start = time.time()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for i in range(len(runs)):
            futures.append(pool.submit(task, i))
        index = {f: i for i, f in enumerate(futures)}
        for k, fut in enumerate(as_completed(futures), 1):
            seconds, r = fut.result(), runs[index[fut]]
            what = f"trained in {seconds:.0f} s" if seconds else "already there with these settings"
            print(f"[{k}/{len(runs)}] {r.label} (seed {r.seed}, {r.run_dir.name}): {what}", flush=True)
    return time.time() - start


def load_results(run: Run) -> dict:
    """The final evaluation results of a finished run."""
    return run.record()["results"]


def train_seconds(runs: Sequence[Run], clock: str = "train_seconds") -> float:
    """Training compute of finished runs: the sum of their ``clock`` records (``train_seconds``, wall time, or
    ``train_cpu_seconds``, each run's own CPU time)."""
    return sum(r.record().get(clock) or 0.0 for r in runs)
