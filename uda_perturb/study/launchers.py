"""Where a study's runs train. ``local``: subprocesses on this machine, ``jobs`` at a time. ``slurm``: one
submitit job per run (a job array per phase), each training its run in a subprocess exactly as the local
launcher does, so run folders, fingerprints and results are the same. A job that SLURM preempts or that reaches
its time limit stops its training with SIGTERM (the trainer writes a checkpoint first) and is requeued by
submitit; the requeued job continues from that checkpoint. Adaptation jobs wait for their warm start's job
(``afterok``) and, as a safeguard, for its folder's lock."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from ..bench import runner
from ..bench.runner import Run, launch, run_all
from ..errors import UserError
from .plan import Plan


def local(plan: Plan, jobs: int = 2, threads: int = 1) -> float:
    """Train every run not already finished with these settings here; returns the wall seconds."""
    return run_all(plan.study.recipe, plan.runs(), jobs, plan.work / "logs", threads)


class RunJob:
    """A cluster job: train ``runs`` in order (an adaptation run after its warm start, which is skipped when
    finished and waited for when another job trains it). Requeued after preemption or timeout."""

    def __init__(self, recipe: str, runs: Sequence[Run], log_dir: Path, threads: int) -> None:
        self.recipe, self.runs, self.log_dir, self.threads = recipe, list(runs), log_dir, threads

    def __call__(self) -> list[str]:
        for r in self.runs:
            launch(self.recipe, r, self.log_dir, self.threads)
        return [str(r.run_dir) for r in self.runs]

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's preemption/timeout hook: stop the training process (it checkpoints on SIGTERM), then
        resubmit this same job, which resumes the run from that checkpoint."""
        import submitit

        child = runner.CHILD
        if child is not None and child.returncode is None:
            child.terminate()
            # os.waitpid, not child.wait(): this handler interrupts the launcher's own child.wait(), which holds
            # the lock that a second wait() would wait for forever
            try:
                os.waitpid(child.pid, 0)
            except ChildProcessError:  # already reaped
                pass
        return submitit.helpers.DelayedSubmission(RunJob(self.recipe, self.runs, self.log_dir, self.threads))


def require_submitit() -> Any:
    """The ``submitit`` module, or a one-line error naming the extra that installs it."""
    try:
        import submitit
    except ImportError:
        raise UserError("the slurm launcher needs submitit: pip install 'uda-perturb[cluster]'") from None
    return submitit


def slurm(plan: Plan, args: argparse.Namespace, cluster: Optional[str] = None) -> list[Any]:
    """Submit the warm starts, then the adaptation runs (after their warm starts), as two job arrays; returns
    the submitit jobs. ``cluster``: submitit's executor (``slurm``; ``local`` runs the same jobs as processes
    on this machine, as the tests do). Partition, GPUs, CPUs, memory and time come from ``args`` or else
    from the study's ``slurm`` section."""
    submitit = require_submitit()
    s = plan.study.slurm
    pick = {k: getattr(args, k, None) if getattr(args, k, None) is not None else getattr(s, k)
            for k in ("partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism")}
    try:
        executor = submitit.AutoExecutor(folder=plan.work / "slurm", cluster=cluster)
    except RuntimeError as exc:  # no SLURM here (submitit looks for srun)
        raise UserError(f"the slurm launcher: {exc} (run it where sbatch works, or try the jobs on this machine "
                        "with --cluster local)") from None
    params = {"name": f"study-{plan.study.name}", "timeout_min": pick["timeout_min"], "cpus_per_task":
              pick["cpus_per_task"], "slurm_array_parallelism": pick["array_parallelism"],
              "slurm_additional_parameters": dict(s.additional)}
    if pick["partition"]:
        params["slurm_partition"] = pick["partition"]
    if pick["mem_gb"]:
        params["mem_gb"] = pick["mem_gb"]
    if executor.cluster != "local":
        params["gpus_per_node"] = pick["gpus_per_node"]
    executor.update_parameters(**params)
    recipe, logs, threads = plan.study.recipe, plan.work / "logs", int(pick["cpus_per_task"] or 1)
    warm = submit(executor, [RunJob(recipe, [w], logs, threads) for w in plan.warm_starts()])
    if warm and executor.cluster == "slurm":
        executor.update_parameters(slurm_additional_parameters={
            **s.additional, "dependency": "afterok:" + ":".join(str(j.job_id) for j in warm)})
    starts = {str(w.run_dir / "segmentor.pt"): w for w in plan.warm_starts()}
    return warm + submit(executor, [RunJob(recipe, [w for w in [starts.get(str(runner.start_weights(r)))] if w]
                                           + [r], logs, threads) for r in plan.adaptations()])


def submit(executor: Any, jobs: Sequence[RunJob]) -> list[Any]:
    """Submit ``jobs`` as one array (none: nothing submitted)."""
    if not jobs:
        return []
    with executor.batch():
        return [executor.submit(j) for j in jobs]
