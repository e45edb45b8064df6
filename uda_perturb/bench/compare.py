"""The comparison benchmark (``benchmarks/compare.py``, ``uda-perturb bench``): CamVid day -> dusk (from
scratch, or on pretrained features with a held-out dusk evaluation) or the synthetic scenes; source-only,
the BatchNorm control, AdaptSegNet, ADVENT (AdvEnt+MinEnt), APODA, APODA with the random control, DACS,
DACS + perturbation and ADVENT + perturbation, with and without photometric augmentation, over seeds. Each
seed has its own source-only warm start (``--shared-warm-start`` for the old protocol), so the spread covers
the whole pipeline; the report has a cost column (seconds per iteration / source-only's)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from .answers import answers_table
from .attack_stats import objective_stats, objective_table
from .gap import closed_by_method, gap_plot, gap_table, read_gap
from .report import (
    DEFAULT_RESULTS,
    add_results_options,
    aggregate,
    check_replace,
    cost_clock,
    cost_plot,
    differences_table,
    environment,
    longest_wall,
    paired_differences,
    per_class_table,
    plot,
    relative_cost,
    results_folder,
    summary_table,
    write_results,
)
from .runner import run_all, train_seconds
from .setups import ARMS, DEFAULT_METHODS, METHODS, PAIRS, SETUPS, Protocol

DEFAULT_SEEDS = (0, 1, 2)


def build_parser(prog: str = "compare") -> argparse.ArgumentParser:
    """Command-line options of the comparison."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__)
    ap.add_argument("--dataset", choices=sorted(SETUPS), default="camvid")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS),
                    help="source_only+targetBN is a control: source-only whose BatchNorm statistics also see "
                         "target batches, as every adversarial method's do (default: the setup's list)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                    help="a subset writes its own results stem (compare_<dataset>_seeds<...>) from the same runs")
    ap.add_argument("--aug", choices=["both", "off", "on"],
                    help="photometric augmentation (brightness/contrast/gamma) during all training (default: "
                         "both arms, or the setup's)")
    ap.add_argument("--pretrain-iters", type=int, help="source-only warm start iterations")
    ap.add_argument("--iters", type=int, help="adaptation iterations after the warm start")
    ap.add_argument("--adapt-lr", type=float, help="adaptation lr (default: the setup's)")
    ap.add_argument("--shared-warm-start", action="store_true", help="one warm start for all seeds (the first "
                    "protocol; its spread then misses the warm start's variance)")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run (recorded in the results)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra recipe override")
    ap.add_argument("--quick", action="store_true", help="a few iterations, one seed: a smoke test")
    ap.add_argument("--work-dir", default="runs/bench")
    add_results_options(ap, quick_default=True)
    ap.add_argument("--name", help="run folder and results file stem (default compare_<dataset>, plus _seeds<...> "
                    "on the results for a seed subset)")
    return ap


def results_stem(work_name: str, seeds: Sequence[int], explicit: bool) -> str:
    """The results' file stem: the run folder's name, plus the seeds when they are not the full protocol's, so a
    partial report can never be taken for (or replace) the full one; a ``--name`` the user chose is kept as is."""
    if explicit or list(seeds) == list(DEFAULT_SEEDS):
        return work_name
    return f"{work_name}_seeds{'-'.join(str(s) for s in seeds)}"


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None, prog: str = "compare") -> int:
    """Warm starts, then every (method, augmentation arm, seed) run, then the report."""
    args = build_parser(prog).parse_args(argv)
    setup: dict[str, Any] = SETUPS[args.dataset]
    seeds = args.seeds[:1] if args.quick else args.seeds
    work_name = args.name or f"compare_{args.dataset}" + ("_quick" if args.quick else "")
    name = results_stem(work_name, seeds, explicit=bool(args.name) or args.quick)
    protocol = Protocol(args.dataset, Path(args.work_dir) / work_name,
                        args.pretrain_iters or (20 if args.quick else setup["pretrain_iters"]),
                        args.iters or (10 if args.quick else setup["iters"]),
                        args.adapt_lr if args.adapt_lr is not None else setup["adapt_lr"],
                        args.overrides, args.shared_warm_start, args.quick)
    args.methods = args.methods or setup.get("methods", DEFAULT_METHODS)
    args.aug = args.aug or setup.get("aug", "both")
    arms = ARMS[args.aug]
    out = results_folder(args, results_dir, args.quick)
    check_replace(args, out, name, [f"{name}.png", f"{name}_cost.png", f"{name}_gap.png"])
    warm = protocol.warm_starts(arms, seeds)
    # seed by seed: a comparison longer than one sitting has whole seeds (every method, paired) as it goes
    runs = [protocol.adaptation(m, on, s) for s in seeds for on in arms for m in args.methods]
    start = time.time()
    logs = protocol.work / "logs"
    run_all(protocol.recipe, warm + runs, args.jobs, logs, args.threads)
    wall = time.time() - start
    everything = warm + runs
    suffix = [" +aug" if on else "" for on in arms]
    pairs = [(a + x, b + x) for x in suffix for a, b in PAIRS]
    clock = cost_clock(runs)  # read once: the cost column and the report's heading use the same clock
    gap = read_gap(Path(results_dir or DEFAULT_RESULTS) / setup["gap_record"]) if "gap_record" in setup else None
    closed = None if gap is None else (gap, closed_by_method(runs, args.methods, suffix, setup["target"], gap))
    compute = train_seconds(everything, cost_clock(everything))  # CPU time when every run recorded it
    report(args, protocol, out, aggregate(everything), name, seeds, wall, compute,
           relative_cost(runs, protocol.iters, clock), paired_differences(runs, pairs, setup["target"]), clock,
           paired_differences(runs, pairs, setup["source"]), closed, objective_stats(runs))
    return 0


def report(args: argparse.Namespace, protocol: Protocol, out: Path, agg: dict, name: str, seeds: Sequence[int],
           wall: float, compute: float, costs: dict, diffs: dict, clock: str, source_diffs: dict,
           gap: Optional[tuple[float, dict]] = None, objectives: Optional[dict] = None) -> None:
    """Write markdown, JSON and the bar plot under the results folder ``out``; ``clock``: the record ``costs``
    were read from (:func:`cost_clock`); ``diffs`` and ``source_diffs``: the paired differences on the target
    and on the source domain's test split; ``gap``: the setup's measured gap in points and each method's share
    of it closed (:func:`~uda_perturb.bench.gap.gap_closed`), for a setup with a gap record; ``objectives``: the
    logged per-objective attack statistics (:func:`~uda_perturb.bench.attack_stats.objective_stats`)."""
    setup = protocol.setup
    t, s, g = setup["target"], setup["source"], setup["groups"]
    env = {"wall_seconds_this_invocation": round(wall),
           "wall_seconds_longest_invocation": round(longest_wall(out / f"{name}.json", wall)), "jobs": args.jobs,
           "threads_per_run": args.threads,
           "train_seconds_all_runs": round(compute), "cost_clock": clock,
           "estimated_wall_seconds_from_scratch": round(compute / max(args.jobs, 1)), "seeds": list(seeds),
           "warm_start_iters": protocol.pre_iters, "adapt_iters": protocol.iters, "recipe": protocol.recipe,
           "setup_overrides": list(setup["overrides"]), "overrides": list(args.overrides),
           "shared_warm_start": args.shared_warm_start}
    out.mkdir(parents=True, exist_ok=True)
    png = plot(agg, t, out / f"{name}.png", f"{args.dataset}: per-class IoU on {t} (mean over seeds)")
    cost_png = cost_plot(agg, costs, t, out / f"{name}_cost.png", f"{args.dataset}: {t} mIoU against training cost")
    warm = ("one source-only warm start per augmentation arm, shared by the seeds" if args.shared_warm_start else
            "a source-only warm start per seed and augmentation arm, so seeds vary the whole pipeline")
    md = [f"# Comparison on {args.dataset} ({protocol.recipe})", "",
          f"Every method starts from {warm} ({protocol.pre_iters} iterations, batch {setup['pretrain_batch']}) and "
          f"adapts for {protocol.iters} iterations (batch {setup['batch']} + {setup['batch']}) at lr "
          f"{protocol.adapt_lr}; seeds {list(seeds)}. Final checkpoints only; no selection on target labels. IoU in "
          "percent, mean ± std over seeds.", "",
          f"## Summary ({t} = target, {s} = source-domain test)", "", summary_table(agg, t, g, s), ""]
    if setup.get("also"):
        a = setup["also"]
        md += [f"## Summary on {a} (every target frame, those adapted on included)", "",
               summary_table(agg, a, g), ""]
    if setup.get("questions"):
        suffix = " +aug" if getattr(args, "aug", "off") == "on" else ""
        keyed = {k.replace(suffix, ""): v for k, v in diffs.items()}
        budget = setup.get("budget_hours")
        md += [f"## What it answers (on {t}; criteria fixed before the runs)", "",
               answers_table(setup["questions"], keyed, env["estimated_wall_seconds_from_scratch"],
                             budget * 3600 if budget else None), ""]
    if diffs:
        md += [f"## Paired differences on {t} (seed by seed: both runs of a seed share its warm start)", "",
               differences_table(diffs, t), ""]
    if source_diffs:
        md += [f"## Paired differences on {s} (the source domain's test frames, which no run trains on)", "",
               differences_table(source_diffs, s), ""]
    if gap is not None:
        md += [f"## Share of the gap closed on {t} (paired gain over source-only / the gap measured before any "
               f"method ran: {setup['gap_record'].replace('.json', '.md')})", "", gap_table(gap[1], gap[0]), ""]
        gap_png = gap_plot(gap[1], gap[0], out / f"{name}_gap.png", f"{args.dataset}: share of the gap closed on {t}")
        if gap_png:
            md += [f"![share of the gap closed]({gap_png.name})", ""]
    measure = ("CPU seconds of each run's own process" if clock == "train_cpu_seconds" else
               "wall seconds, so other jobs sharing the machine inflate it")
    md += [f"## Cost (training {measure}, per iteration)", "", "| method | s/iter | / source-only |",
           "|---|---|---|"] + [f"| {k} | {v['seconds_per_iter']:.3f} | {v['relative_to_source_only']:.2f} |"
                               for k, v in costs.items()] + [""]
    if objectives:
        md += ["## Did each attack objective steer the step? (the add-on's logged statistics, mean over training)", "",
               objective_table(objectives), ""]
    md += [f"## Per-class IoU on {t}", "", per_class_table(agg, t), "",
           f"## Per-class IoU on {s}", "", per_class_table(agg, s), ""]
    if png:
        md += [f"![per-class IoU]({png.name})", ""]
    if cost_png:
        md += [f"![mIoU against cost]({cost_png.name})", ""]
    payload = {"environment": {**environment(), **env}, "results": agg, "cost": costs, "paired_differences": diffs,
               "paired_differences_source": source_diffs, "attack_objectives": objectives or {},
               **({"gap_points": gap[0], "gap_closed": gap[1]} if gap is not None else {})}
    _, md_path = write_results(out, name, payload, "\n".join(md))
    print(md_path.read_text())
