"""Where a study stands: each run done / running / stopped / failed / to do, its progress, and the time
left or needed, estimated from measured step times: this study's finished runs of the same label first, then
the study's ``cost_record`` (a report's ``cost`` table, or ``speed.py``'s step times keyed by method), else said
to be unmeasured."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Optional

from ..bench.report import DEFAULT_RESULTS
from ..bench.runner import STARTED, Run, lock_path, train_command
from .plan import Plan, missing_paths


def iteration(run: Run) -> int:
    """The last iteration a run logged (0 before its first log line)."""
    log = run.run_dir / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return int(json.loads(lines[-1]).get("iteration", 0)) if lines else 0


def held(run: Run) -> bool:
    """Whether a process holds the run's folder lock (it is training it now)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - POSIX here
        return False
    if not lock_path(run.run_dir).is_file():
        return False
    with open(lock_path(run.run_dir), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def finished_runs(plan: Plan) -> set[Path]:
    """The folders holding their very run, finished: each run's fingerprint (its config loaded, its start weights
    hashed) computed once for a whole status or dry run."""
    return {r.run_dir for r in plan.runs() if r.done(plan.study.recipe)}


def state(plan: Plan, run: Run, finished: set[Path]) -> str:
    """``done`` (this very run finished: in ``finished``), ``running``, ``stopped`` (started, cut off: resumes
    from its checkpoint), ``failed`` (its log ends in an error) or ``to do``."""
    if run.run_dir in finished:
        return "done"
    if held(run):
        return "running"
    if (run.run_dir / STARTED).is_file():
        log = plan.work / "logs" / f"{run.run_dir.name}.log"
        tail = log.read_text()[-2000:] if log.is_file() else ""
        return "failed" if "Error" in tail and not (run.run_dir / "checkpoint.pt").is_file() else "stopped"
    return "to do"


def seconds_per_iter(plan: Plan, finished: set[Path]) -> tuple[dict[str, float], dict[str, str]]:
    """Measured seconds per iteration by label and where each came from (this study's ``finished`` runs, by the
    clock each recorded, else the study's ``cost_record``)."""
    found: dict[str, list[float]] = {}
    for r in plan.runs():
        if r.run_dir in finished:
            rec, iters = r.record(), plan.iters_of(r)
            found.setdefault(r.label, []).append((rec.get("train_cpu_seconds") or rec.get("train_seconds") or 0)
                                                 / max(iters, 1))
    rates = {k: sum(v) / len(v) for k, v in found.items()}
    source = {k: "measured here" for k in rates}
    record = plan.study.cost_record
    path = next((p for p in (Path(record), DEFAULT_RESULTS / record) if p.is_file()), None) if record else None
    if path is not None:
        data = json.loads(path.read_text())  # a report's cost table, or speed.py's rows (step seconds per method)
        table = data.get("cost") or {r["method"]: {"seconds_per_iter": r["step_s"]} for r in data.get("rows", [])}
        for k, v in table.items():
            if k not in rates:
                rates[k], source[k] = float(v["seconds_per_iter"]), path.name
    return rates, source


def estimate(plan: Plan, jobs: int, finished: set[Path], rates: dict[str, float],
             remaining_only: bool = False) -> tuple[Optional[float], list[str]]:
    """Seconds of training the runs need (all of them, or what is left after the ``finished`` ones) at the step
    ``rates`` over ``jobs`` parallel slots, and the labels without a measured step time (the estimate is then
    ``None``)."""
    total, missing = 0.0, []
    for r in plan.runs():
        iters = plan.iters_of(r)
        if remaining_only:
            iters = 0 if r.run_dir in finished else iters - iteration(r)
        if iters and r.label not in rates:
            missing.append(r.label)
        total += iters * rates.get(r.label, 0.0)
    return (None if missing else total / max(jobs, 1)), sorted(set(missing))


def hours(seconds: Optional[float]) -> str:
    """``"1.23 h"``, or ``"unmeasured"``."""
    return "unmeasured" if seconds is None else f"{seconds / 3600:.2f} h"


def status_text(plan: Plan, jobs: int = 2) -> str:
    """One line per run (state, iteration reached) and the time left at ``jobs`` in parallel."""
    lines: list[str] = []
    counts: dict[str, int] = {}
    finished = finished_runs(plan)
    for r in plan.runs():
        s = state(plan, r, finished)
        counts[s] = counts.get(s, 0) + 1
        lines.append(f"{s:8s} {r.run_dir.name}  ({r.label}, seed {r.seed})")
    left, missing = estimate(plan, jobs, finished, seconds_per_iter(plan, finished)[0], remaining_only=True)
    eta = hours(left) + (f" (no step time for {', '.join(missing)})" if missing else "")
    head = ", ".join(f"{v} {k}" for k, v in counts.items())
    return "\n".join([f"study {plan.study.name} in {plan.work}: {head}; time left at {jobs} jobs: {eta}", *lines])


def dry_run_text(plan: Plan, jobs: int, launcher: str = "local") -> str:
    """Every run with its command and the estimated cost from measured step times (or why there is none)."""
    finished = finished_runs(plan)
    rates, source = seconds_per_iter(plan, finished)
    lines = []
    for r in plan.runs():
        iters = plan.iters_of(r)
        cost = (f"{iters * rates[r.label] / 3600:.2f} h ({source[r.label]})" if r.label in rates
                else "unmeasured")
        lines += [f"# {r.label}, seed {r.seed}: {iters} iterations, {cost}",
                  shlex.join(train_command(plan.study.recipe, r))]
    total, missing = estimate(plan, jobs if launcher == "local" else 1, finished, rates)
    where = f"{jobs} local jobs" if launcher == "local" else f"{plan.study.slurm.gpus_per_node} GPU(s) per job"
    head = (f"study {plan.study.name}: {len(plan.runs())} runs; total {hours(total)} over {where}"
            + (" (GPU-hours: sum over jobs)" if launcher == "slurm" else ""))
    if missing:
        head += (f"; no measured step time for {', '.join(missing)} (run a few, or name a cost_record made on "
                 "this hardware)")
    absent = missing_paths(plan)
    return "\n".join([head, *([f"missing on this machine: {'; '.join(absent)}"] if absent else []), *lines])
