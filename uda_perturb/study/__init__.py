"""Studies: a comparison declared in a YAML file (:mod:`.spec`) and run on this machine or a SLURM cluster
(:mod:`.launchers`), with its status and report from whatever has finished.

    uda-perturb study run camvid_rendered_v4 --dry-run      # every run, its command and estimated cost
    uda-perturb study run my_study.yaml --launcher slurm --partition gpu
    uda-perturb study status my_study.yaml
    uda-perturb study report my_study.yaml

From Python: ``uda_perturb.study.run("my_study.yaml", launcher="local", jobs=2)``, ``status(...)``,
``report(...)``. Packaged studies: ``uda-perturb list studies``."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

from ..bench.report import check_replace
from .plan import Plan, make_plan, missing_paths
from .progress import dry_run_text, status_text
from .report import write_report
from .spec import Study, load_study, packaged_studies

__all__ = ["Study", "load_study", "main", "packaged_studies", "report", "run", "status"]


def _plan(args: argparse.Namespace) -> Plan:
    study = load_study(args.study, args.study_overrides)
    return make_plan(study, args.work_dir, args.seeds, args.methods, args.overrides, args.quick)


def _stem(args: argparse.Namespace, plan: Plan) -> str:
    """The report's file stem: ``--name``, else the study's name, plus the seeds when a subset ran (a partial
    report never replaces the full one)."""
    if args.name or args.quick:
        return args.name or f"{plan.study.name}_quick"
    subset = list(plan.seeds) != list(plan.study.seeds)
    return plan.study.name + (f"_seeds{'-'.join(str(s) for s in plan.seeds)}" if subset else "")


def _results(args: argparse.Namespace, plan: Plan) -> Path:
    """``--results-dir``, else a benchmark entry point's committed folder, else the study's run folder."""
    return Path(args.results_dir or (args.results_default if args.results_default and not args.quick else plan.work))


def build_parser(prog: str = "uda-perturb study") -> argparse.ArgumentParser:
    """``run`` / ``status`` / ``report`` and their options."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("study", help="a study file, or a packaged study's name (uda-perturb list studies)")
    common.add_argument("--work-dir", default="runs/studies", help="where run folders live (<work-dir>/<folder>)")
    common.add_argument("--seeds", type=int, nargs="+", help="a subset of the study's seeds")
    common.add_argument("--methods", nargs="+", help="a subset of the study's method labels")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override of every run (it changes their fingerprints: new runs)")
    common.add_argument("--with", dest="study_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the study file, e.g. --with adaptation.iters=100")
    common.add_argument("--quick", action="store_true", help="first seed, 20 + 10 iterations: a smoke test")
    common.add_argument("--jobs", type=int, default=2, help="local runs in parallel (and the ETA's slots)")
    common.add_argument("--results-dir", help="where the report goes (default: the study's run folder)")
    common.add_argument("--name", help="the report's file stem (default: the study's name)")
    common.add_argument("--force", action="store_true", help="replace committed results (benchmark entry points)")
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="action", required=True)
    p = sub.add_parser("run", parents=[common], help="train what is missing, then write the report")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local")
    p.add_argument("--dry-run", action="store_true", help="list every run, its command and estimated cost")
    p.add_argument("--threads", type=int, default=1, help="local: torch threads per run")
    p.add_argument("--cluster", choices=["slurm", "local"], default="slurm",
                   help="slurm launcher: submitit's executor (local: the same jobs as processes here)")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return (then status / report)")
    for flag, kind in (("partition", str), ("gpus-per-node", int), ("cpus-per-task", int), ("mem-gb", int),
                       ("timeout-min", int), ("array-parallelism", int)):
        p.add_argument(f"--{flag}", type=kind, help="slurm: overrides the study's slurm section")
    sub.add_parser("status", parents=[common], help="done / running / stopped / failed / to do, and an ETA")
    sub.add_parser("report", parents=[common], help="write the report from the finished runs")
    return ap


def main(argv: Optional[Sequence[str]] = None, prog: str = "uda-perturb study",
         results_default: Optional[Path] = None) -> int:
    """The ``uda-perturb study`` command; ``results_default``: a benchmark entry point's committed folder."""
    args = build_parser(prog).parse_args(argv)
    args.results_default = results_default
    plan = _plan(args)
    if args.action == "status":
        print(status_text(plan, args.jobs))
    elif args.action == "report":
        print(write_report(plan, _results(args, plan), _stem(args, plan), jobs=args.jobs).read_text())
    elif args.dry_run:
        print(dry_run_text(plan, args.jobs, args.launcher))
    else:
        md = execute(args, plan)
        if md is not None:
            print(md.read_text())
    return 0


def execute(args: argparse.Namespace, plan: Plan) -> Optional[Path]:
    """Train what is missing with the chosen launcher, then write the report (``None``: submitted, not
    waited for)."""
    out, stem = _results(args, plan), _stem(args, plan)
    if args.results_default and not args.results_dir and not args.quick:
        check_replace(args, out, stem, [f"{stem}.png", f"{stem}_cost.png", f"{stem}_gap.png"])
    missing = missing_paths(plan)
    if missing:
        raise FileNotFoundError(f"study {plan.study.name}: missing before any run started: {'; '.join(missing)}")
    start = time.time()
    if args.launcher == "slurm":
        from .launchers import slurm

        jobs = slurm(plan, args, args.cluster)
        print(f"submitted {len(jobs)} jobs ({', '.join(str(j.job_id) for j in jobs[:4])}...); logs in "
              f"{plan.work / 'slurm'}", flush=True)
        if args.no_wait:
            return None
        for j in jobs:
            j.result()
    else:
        from .launchers import local

        local(plan, args.jobs, args.threads)
    return write_report(plan, out, stem, time.time() - start, args.jobs, args.threads)


def _api_args(study: str | Path, **kw: object) -> argparse.Namespace:
    """The CLI's ``run`` options with ``kw`` (Python names: ``work_dir``, ``study_overrides``...) applied."""
    defaults = vars(build_parser().parse_args(["run", str(study)]))
    unknown = set(kw) - set(defaults)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}; options: {', '.join(sorted(defaults))}")
    return argparse.Namespace(**{**defaults, **kw, "results_default": None})


def run(study: str | Path, **options: object) -> Optional[Path]:
    """Run a study from Python (options as the CLI's: ``launcher="slurm"``, ``jobs=2``, ``work_dir=...``,
    ``seeds=[0]``); returns the report's markdown path (``None`` with ``no_wait``)."""
    args = _api_args(study, **options)
    return execute(args, _plan(args))


def status(study: str | Path, **options: object) -> str:
    """A study's status text (options as :func:`run`'s)."""
    args = _api_args(study, **options)
    return status_text(_plan(args), int(args.jobs))


def report(study: str | Path, **options: object) -> Path:
    """Write a study's report from its finished runs (options as :func:`run`'s); returns the markdown path."""
    args = _api_args(study, **options)
    return write_report(plan := _plan(args), _results(args, plan), _stem(args, plan), jobs=int(args.jobs))
