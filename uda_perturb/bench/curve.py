"""Learning curves (``benchmarks/curve.py``): source-only and DACS (or any comparison methods) from one warm
start, evaluated every ``--every`` iterations, at one or more learning rates; the adaptation length and lr
are chosen by the label-free rule (best day-test mIoU; within ``--tolerance`` of it, the lowest target
entropy), never by target labels, which are shown beside it.

    python benchmarks/curve.py --dataset camvid_pretrained --iters 600 --lrs 1e-4 3e-4
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from .report import add_results_options, check_replace, environment, pyplot, results_folder, write_results
from .runner import Run, run_all


def curve(run: Run) -> list[dict[str, Any]]:
    """``[{iteration, split: {miou, mean_entropy, ...}}]`` from a finished run's metrics log (final included)."""
    points = []
    for line in (run.run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "eval" in record:
            points.append({"iteration": record["iteration"], **record["eval"]})
    return points


def choose(points: dict[str, list[dict]], source: str, target: str, tolerance: float) -> tuple[str, int]:
    """The (lr, iteration) the label-free rule picks over every evaluated point of the chosen method."""
    flat = [(lr, p) for lr, ps in points.items() for p in ps]
    top = max(p[source]["miou"] for _, p in flat)
    close = [(lr, p) for lr, p in flat if p[source]["miou"] >= top - tolerance]
    lr, p = min(close, key=lambda c: c[1][target].get("mean_entropy", 0.0))
    return lr, int(p["iteration"])


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    """Warm start, one run per (method, lr), the curves and the rule's pick."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="camvid_pretrained", help="a packaged study or study file: its protocol")
    ap.add_argument("--methods", nargs="+", default=["source_only", "dacs"], help="labels of the study's methods")
    ap.add_argument("--select", default="dacs", help="the method whose curve chooses length and lr")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--pretrain-iters", type=int, help="warm start iterations (default: the setup's)")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--lrs", type=float, nargs="+", help="adaptation lrs (default: the setup's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.5)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel, started in --methods order per lr "
                    "(list the costliest method first so the cheap runs fill the other slot)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override of every adaptation run (not the warm start), e.g. train.channels_last=false")
    ap.add_argument("--work-dir", default="runs/bench", help="the comparison's work folder (warm starts reused)")
    add_results_options(ap)
    args = ap.parse_args(argv)
    from dataclasses import replace

    from ..study.plan import make_plan
    from ..study.spec import load_study

    study = load_study(args.dataset)
    if args.pretrain_iters and study.warm_start:
        study = replace(study, warm_start=replace(study.warm_start, iters=args.pretrain_iters))
    name = f"curve_{Path(args.dataset).stem}"
    out = results_folder(args, results_dir)
    check_replace(args, out, name, [f"{name}.png"])
    lrs = args.lrs or [study.adaptation.lr]
    on = study.augmentation[-1]
    base = make_plan(study, args.work_dir, [args.seed], args.methods)
    warm = base.warm_start(on, args.seed)
    assert warm is not None, "a learning curve starts from the study's warm start"
    runs: dict[tuple[str, float], Run] = {}
    for lr in lrs:
        adapt = replace(study, adaptation=replace(study.adaptation, iters=args.iters, lr=lr))
        p = make_plan(adapt, args.work_dir, [args.seed], args.methods, [f"train.eval_every={args.every}",
                                                                         *args.overrides])
        for m in args.methods:
            r = p.adaptation(m, on, args.seed)
            runs[(m, lr)] = Run(r.label, r.overrides, base.work / f"curve_{r.run_dir.name}_lr{lr:g}_i{args.iters}",
                                r.seed)
    logs = base.work / "logs"
    run_all(study.recipe, [warm, *runs.values()], args.jobs, logs)
    t, s = study.evaluation.target, str(study.evaluation.source)
    curves = {f"{m} lr {lr:g}": curve(r) for (m, lr), r in runs.items()}
    pick_lr, pick_iter = choose({f"{lr:g}": curves[f"{args.select} lr {lr:g}"] for lr in lrs}, s, t, args.tolerance)
    warm_res = warm.record()["results"]
    md = [f"# Learning curves on {args.dataset} (seed {args.seed})", "",
          f"From one source-only warm start ({base.warm_iters} iterations), {args.iters} adaptation iterations per "
          f"run, evaluated every {args.every}. Label-free rule on `{args.select}`: the best {s} mIoU, then within "
          f"{args.tolerance} points the lowest mean entropy on the unlabelled {t} images. **It picks lr {pick_lr}, "
          f"{pick_iter} iterations.** {t} mIoU is shown, not used.", "",
          f"| run | iteration | {s} mIoU (rule) | {t} entropy (tie-break) | {t} mIoU (not used) |",
          "|---|---|---|---|---|",
          f"| warm start | 0 | {warm_res[s]['miou']:.1f} | {warm_res[t].get('mean_entropy', float('nan')):.1f} | "
          f"{warm_res[t]['miou']:.1f} |"]
    for label, pts in curves.items():
        md += [f"| {label} | {p['iteration']} | {p[s]['miou']:.1f} | {p[t].get('mean_entropy', float('nan')):.1f} | "
               f"{p[t]['miou']:.1f} |" for p in pts]
    out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for label, pts in curves.items():
            its = [0] + [p["iteration"] for p in pts]
            for ax, split, key in ((axes[0], s, "miou"), (axes[1], t, "mean_entropy"), (axes[2], t, "miou")):
                ax.plot(its, [warm_res[split].get(key, float("nan"))] + [p[split].get(key, float("nan"))
                                                                         for p in pts], marker="o", label=label)
        for ax, title in zip(axes, (f"{s} mIoU (selection)", f"{t} entropy (tie-break)", f"{t} mIoU (not used)")):
            ax.set_title(title)
            ax.set_xlabel("adaptation iteration")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        md += ["", f"![learning curves]({name}.png)"]
    write_results(out, name, {"environment": {**environment(), "warm_start": str(warm.run_dir),
                                              "overrides": args.overrides}, "curves": curves,
                              "warm_start": warm_res, "selected": {"lr": pick_lr, "iters": pick_iter}},
                  "\n".join(md))
    print("\n".join(md))
    return 0
