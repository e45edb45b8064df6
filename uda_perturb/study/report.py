"""A study's report from whatever runs have finished: summary, the questions' answers, paired differences per
seed on the target and source splits, the gap closed, the cost, the attack objectives' statistics, per-class
tables and plots (markdown + JSON under the results folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bench.answers import answers_table
from ..bench.attack_stats import objective_stats, objective_table
from ..bench.gap import closed_by_method, gap_plot, gap_table, read_gap
from ..bench.report import (
    DEFAULT_RESULTS,
    aggregate,
    cost_clock,
    cost_plot,
    differences_table,
    environment,
    longest_wall,
    paired_differences,
    per_class_table,
    plot,
    relative_cost,
    select_variant,
    summary_table,
    write_results,
)
from ..bench.runner import train_seconds
from .plan import Plan


def write_report(plan: Plan, out: Path, stem: str, wall: float = 0.0, jobs: int = 2, threads: int = 1) -> Path:
    """Write ``<out>/<stem>.{md,json}`` and plots for the finished runs of ``plan``; returns the markdown path."""
    st, e = plan.study, plan.study.evaluation
    warm = [r for r in plan.warm_starts() if r.done(st.recipe)]
    runs = [r for r in plan.adaptations() if r.done(st.recipe)]
    everything = warm + runs
    if not everything:
        raise FileNotFoundError(f"study {st.name}: no finished run under {plan.work} to report on")
    t, s, g, sfx = e.target, e.source, e.groups, [" +aug" if on else "" for on in st.augmentation]
    pairs = [(a + x, b + x) for x in sfx for a, b in st.all_pairs()]
    clock = cost_clock(runs)
    costs = relative_cost(runs, plan.iters, clock) if runs else {}
    diffs = paired_differences(runs, pairs, t)
    source_diffs = paired_differences(runs, pairs, s) if s else {}
    gap = read_gap(next((p for p in (Path(st.gap_record), out / st.gap_record, DEFAULT_RESULTS / st.gap_record)
                         if p.is_file()), out / st.gap_record)) if st.gap_record else None
    compute = train_seconds(everything, cost_clock(everything))
    env: dict[str, Any] = {
        "wall_seconds_this_invocation": round(wall),
        "wall_seconds_longest_invocation": round(longest_wall(out / f"{stem}.json", wall)), "jobs": jobs,
        "threads_per_run": threads, "train_seconds_all_runs": round(compute), "cost_clock": clock,
        "estimated_wall_seconds_from_scratch": round(compute / max(jobs, 1)), "seeds": list(plan.seeds),
        "warm_start_iters": plan.warm_iters, "adapt_iters": plan.iters, "recipe": st.recipe, "study": st.path,
        "setup_overrides": list(st.overrides), "overrides": list(plan.extra),
        "runs_finished": f"{len(everything)} of {len(plan.runs())}"}
    agg = aggregate(everything)
    title = Path(st.path or st.name).stem
    out.mkdir(parents=True, exist_ok=True)
    png = plot(agg, t, out / f"{stem}.png", f"{title}: per-class IoU on {t} (mean over seeds)")
    cost_png = cost_plot(agg, costs, t, out / f"{stem}_cost.png", f"{title}: {t} mIoU against training cost")
    w, a = st.warm_start, st.adaptation
    start = ("no warm start (each run trains from the recipe's start weights)" if w is None else
             "a source-only warm start per augmentation arm, shared by the seeds" if w.shared else
             "a source-only warm start per seed and augmentation arm, so seeds vary the whole pipeline")
    sizes = f" ({plan.warm_iters} iterations, batch {w.batch})" if w else ""
    md = [f"# Comparison on {title} ({st.recipe})", "",
          f"Every method starts from {start}{sizes} and adapts for {plan.iters} iterations (batch {a.batch} + "
          f"{a.batch}) at lr {a.lr}; seeds {list(plan.seeds)}. Final checkpoints only; no selection on target "
          "labels. IoU in percent, mean ± std over seeds.", "",
          f"## Summary ({t} = target, {s} = source-domain test)", "", summary_table(agg, t, g, s), ""]
    for x in e.extra:
        md += [f"## Summary on {x}", "", summary_table(agg, x, g), ""]
    if len(everything) < len(plan.runs()):
        md += [f"**Partial report: {env['runs_finished']} runs finished.**", ""]
    if st.questions:
        keyed = {k.replace(" +aug", "") if sfx == [" +aug"] else k: v for k, v in diffs.items()}
        budget = st.budget_hours
        md += [f"## What it answers (on {t}; criteria fixed before the runs)", "",
               answers_table(st.questions, keyed, env["estimated_wall_seconds_from_scratch"],
                             budget * 3600 if budget else None), ""]
    if diffs:
        md += [f"## Paired differences on {t} (seed by seed: both runs of a seed share its warm start)", "",
               differences_table(diffs, t), ""]
    if source_diffs:
        md += [f"## Paired differences on {s} (the source domain's test frames, which no run trains on)", "",
               differences_table(source_diffs, str(s)), ""]
    closed = None
    if gap is not None:
        closed = closed_by_method(runs, plan.methods, sfx, t, gap)
        md += [f"## Share of the gap closed on {t} (paired gain over source-only / the gap measured before any "
               f"method ran: {str(st.gap_record).replace('.json', '.md')})", "", gap_table(closed, gap), ""]
        gap_png = gap_plot(closed, gap, out / f"{stem}_gap.png", f"{title}: share of the gap closed on {t}")
        if gap_png:
            md += [f"![share of the gap closed]({gap_png.name})", ""]
    if st.select is not None and s and runs:
        best = select_variant(aggregate(runs), s, t, st.select)
        md += [f"Label-free choice (best {s} mIoU; within {st.select} points, the lowest {t} entropy): **{best}**", ""]
    measure = ("CPU seconds of each run's own process" if clock == "train_cpu_seconds" else
               "wall seconds, so other jobs sharing the machine inflate it")
    md += [f"## Cost (training {measure}, per iteration)", "", "| method | s/iter | / source-only |",
           "|---|---|---|"] + [f"| {k} | {v['seconds_per_iter']:.3f} | {v['relative_to_source_only']:.2f} |"
                               for k, v in costs.items()] + [""]
    objectives = objective_stats(runs)
    if objectives:
        md += ["## Did each attack objective steer the step? (the add-on's logged statistics, mean over training)", "",
               objective_table(objectives), ""]
    md += [f"## Per-class IoU on {t}", "", per_class_table(agg, t), ""]
    md += [f"## Per-class IoU on {s}", "", per_class_table(agg, s), ""] if s else []
    md += [f"![per-class IoU]({png.name})", ""] if png else []
    md += [f"![mIoU against cost]({cost_png.name})", ""] if cost_png else []
    payload = {"environment": {**environment(), **env}, "results": agg, "cost": costs, "paired_differences": diffs,
               "paired_differences_source": source_diffs, "attack_objectives": objectives or {},
               **({"gap_points": gap, "gap_closed": closed} if gap is not None else {})}
    _, md_path = write_results(out, stem, payload, "\n".join(md))
    return md_path
