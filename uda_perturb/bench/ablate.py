"""Ablations (``benchmarks/ablate.py``), chosen with the label-free rule of :func:`select_variant`; target
mIoU columns are reported for information only.

``--method apoda``: attack objectives alone and combined, eps sweep (relative and absolute), steps 1 vs 3,
L2 vs Linf, discriminator on outputs vs on features, target defense weight; from the comparison's plain
warm start of the first seed (or ``--warm-start``).

``--method dacs``: the perturbation add-on's radius on DACS (no add-on, eps 0.05 / 0.1 / 0.2 relative),
in the comparison's own protocol: the same per-seed warm starts and augmentation arm, and the comparison's
``dacs`` and ``dacs+perturbation`` runs are reused, not re-run.

    python benchmarks/ablate.py --dataset camvid --iters 300
    python benchmarks/ablate.py --dataset camvid_pretrained --method dacs --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional, Sequence

from .report import (
    add_results_options,
    aggregate,
    check_replace,
    differences_table,
    environment,
    longest_wall,
    mean_std,
    paired_differences,
    pyplot,
    results_folder,
    save_figure,
    select_variant,
    write_results,
)
from .runner import Run, run_all, train_seconds
from .setups import ARMS, DACS_RADII, SETUPS, Protocol

BASE = {"ndf": 32}


def variants() -> dict[str, dict]:
    """Name -> APODA ``perturbation`` settings (plus method-level options under ``_method``)."""
    v: dict[str, dict] = {"default (classifier+discriminator, eps 0.1 rel, K=1, L2, D on softmax)": {}}
    v["attack: classifier only"] = {"source_attacks": ["classifier"], "target_attacks": ["classifier"]}
    v["attack: discriminator only"] = {"source_attacks": ["discriminator"], "target_attacks": ["discriminator"]}
    v["attack: entropy only"] = {"source_attacks": ["entropy"], "target_attacks": ["entropy"]}
    v["attack: all three"] = {"source_attacks": ["classifier", "discriminator", "entropy"],
                              "target_attacks": ["classifier", "discriminator", "entropy"]}
    for e in (0.02, 0.05, 0.2, 0.5):
        v[f"eps {e} relative"] = {"eps": e}
    for e in (0.5, 1.0, 2.0, 4.0):
        v[f"eps {e} absolute"] = {"eps": e, "eps_mode": "absolute"}
    v["steps 3"] = {"steps": 3}
    v["Linf"] = {"norm": "linf"}
    v["D on features (pixel D)"] = {"_method": {"discriminator": "pixel", "discriminator_input": "features"}}
    v["lambda_target 1.0"] = {"lambda_target": 1.0}
    v["lambda_target 0"] = {"lambda_target": 0.0}
    return v


def to_yaml(d: dict) -> str:
    return json.dumps(d)  # JSON is valid YAML flow syntax


def _entropy(a: dict, split: str) -> str:
    return mean_std(a[split]["mean_entropy"]) if "mean_entropy" in a[split] else "-"


def plot_eps_sweep(agg: dict, reference: dict, source: str, target: str, path: Path, title: str) -> Path | None:
    """mIoU against eps (relative and absolute radii side by side); ``None`` without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    default = next((k for k in agg if k.startswith("default")), None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, mode in zip(axes, ("relative", "absolute")):
        pts = {float(k.split()[1]): a for k, a in agg.items() if k.startswith("eps ") and k.endswith(mode)}
        if mode == "relative" and default is not None:
            pts[0.1] = agg[default]  # the default radius is 0.1 relative
        xs = sorted(pts)
        for split, style, label in ((source, "o-", f"{source} mIoU (selection)"),
                                    (target, "s--", f"{target} mIoU (not used)")):
            ys = [pts[x][split]["miou"]["mean"] for x in xs]
            es = [pts[x][split]["miou"]["std"] for x in xs]
            ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=3, label=label)
        for split, a in ((source, reference), (target, reference)):
            for v in a.values():
                ax.axhline(v[split]["miou"]["mean"], color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(f"eps ({mode}{', x feature norm' if mode == 'relative' else ''})")
        ax.set_title(f"{title}: {mode} radius")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU (%)")
    axes[0].legend(fontsize=8)
    fig.text(0.5, -0.02, "dotted: source-only warm start", ha="center", fontsize=8)
    return save_figure(plt, fig, path)


def plot_dacs_radius(agg: dict, reference: dict, source: str, target: str, path: Path,
                     title: str) -> Optional[Path]:
    """mIoU against the add-on's relative radius on DACS (0 = no add-on); ``None`` without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    radius = {"dacs": 0.0, "dacs+perturbation eps0.05": 0.05, "dacs+perturbation": 0.1,
              "dacs+perturbation eps0.2": 0.2}
    pts = sorted((radius[k.replace(" +aug", "")], a) for k, a in agg.items() if k.replace(" +aug", "") in radius)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for split, style, label in ((source, "o-", f"{source} mIoU (selection)"),
                                (target, "s--", f"{target} mIoU (not used)")):
        ax.errorbar([x for x, _ in pts], [a[split]["miou"]["mean"] for _, a in pts],
                    yerr=[a[split]["miou"]["std"] for _, a in pts], fmt=style, capsize=3, label=label)
        for v in reference.values():
            ax.axhline(v[split]["miou"]["mean"], color="grey", lw=0.8, ls=":")
    ax.set_xticks([x for x, _ in pts], ["no add-on" if x == 0 else f"{x:g}" for x, _ in pts])
    ax.set_xlabel("add-on radius eps (x feature norm)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"{title}: DACS + perturbation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.5, -0.02, "dotted: source-only warm starts (mean)", ha="center", fontsize=8)
    return save_figure(plt, fig, path)


def _row(name: str, a: dict, s: str, t: str, seeds: object = None) -> str:
    return (f"| {name} | {a['seeds'] if seeds is None else seeds} | {mean_std(a[s]['miou'])} | "
            f"{mean_std(a[s]['miou_tail'])} | {_entropy(a, t)} | {mean_std(a[t]['miou'])} | "
            f"{mean_std(a[t]['miou_tail'])} | {mean_std(a[t]['miou_head'])} |")


def apoda_folder(protocol: Protocol) -> Path:
    """Where the APODA variants live, beside the comparison's folder (``ablate_apoda_<dataset>[_quick]``)."""
    return protocol.work.parent / protocol.work.name.replace("compare_", "ablate_apoda_", 1)


def apoda_runs(protocol: Protocol, weights: Path, seeds: Sequence[int], only: Optional[Sequence[str]]) -> list[Run]:
    """The APODA variants' runs from one warm start (``weights``), in their own folder."""
    runs = []
    for i, (name, pert) in enumerate(variants().items()):
        if only and not any(o in name for o in only):
            continue
        pert = dict(pert)
        method_opts = {**BASE, **pert.pop("_method", {}), "perturbation": pert}
        extra = ["method.name=apoda", f"method.options={to_yaml(method_opts)}"]
        for seed in seeds:
            runs.append(Run(name, protocol.common() + extra + protocol.adapt_overrides(weights),
                            apoda_folder(protocol) / f"v{i:02d}_s{seed}", seed))
    return runs


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    """Run the chosen ablation (finished runs are skipped) and write its report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(SETUPS), default="camvid")
    ap.add_argument("--iters", type=int)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds per variant (dacs: each seed with its "
                                                                      "own warm start, as in the comparison)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work-dir", default="runs/bench", help="the comparison's work folder (its runs are reused)")
    ap.add_argument("--warm-start", help="apoda: segmentor.pt to start from (default: the comparison's plain warm "
                                         "start of the first seed, trained here if missing)")
    ap.add_argument("--tolerance", type=float, default=0.5,
                    help="source-test mIoU points within which the target entropy breaks the tie")
    ap.add_argument("--name", help="results file stem (default ablate_<dataset> or ablate_dacs_<dataset>)")
    ap.add_argument("--only", nargs="*", help="apoda: substrings of variant names to run")
    ap.add_argument("--method", choices=["apoda", "dacs"], default="apoda",
                    help="apoda: the APODA variants; dacs: the perturbation add-on's radius on DACS")
    ap.add_argument("--aug", choices=["on", "off"], help="dacs: the comparison's augmentation arm to reuse (default: "
                    "augmented when the comparison runs that arm)")
    ap.add_argument("--quick", action="store_true", help="the protocol of `compare --quick` (20 warm-start and 10 "
                    "adaptation iterations, first seed): a smoke test")
    add_results_options(ap, quick_default=True)
    args = ap.parse_args(argv)
    setup = SETUPS[args.dataset]
    if args.quick:
        args.seeds = args.seeds[:1]
    suffix = "_quick" if args.quick else ""
    protocol = Protocol(args.dataset, Path(args.work_dir) / f"compare_{args.dataset}{suffix}",
                        20 if args.quick else setup["pretrain_iters"],
                        args.iters or (10 if args.quick else setup["iters"]), setup["adapt_lr"], quick=args.quick)
    name = args.name or (f"ablate_{args.dataset}" if args.method == "apoda" else f"ablate_dacs_{args.dataset}") + suffix
    out = results_folder(args, results_dir, args.quick)
    check_replace(args, out, name, [f"{name}_eps.png"])
    start = time.time()
    if args.method == "dacs":
        on = ARMS[args.aug or setup.get("aug", "both")][-1]  # the comparison's arm (augmented when it runs both)
        warm = protocol.warm_starts([on], args.seeds)
        runs = [protocol.adaptation(m, on, s) for m in DACS_RADII for s in args.seeds]
        logs = protocol.work / "logs"
    else:
        warm = [protocol.warm_start(False, args.seeds[0])] if not args.warm_start else []
        weights = Path(args.warm_start) if args.warm_start else warm[0].run_dir / "segmentor.pt"
        runs = apoda_runs(protocol, weights, args.seeds, args.only)
        logs = apoda_folder(protocol) / "logs"
    run_all(protocol.recipe, warm + runs, args.jobs, logs)
    agg = aggregate(runs)
    reference = aggregate(warm) if warm else {}
    t, s = setup["target"], setup["source"]
    best = select_variant(agg, s, t, args.tolerance)
    rows = ["| variant | seeds | source-test mIoU (selection) | source-test tail mIoU | target entropy (label-free, "
            "tie-break) | target mIoU | target tail mIoU | target head mIoU |", "|---|---|---|---|---|---|---|---|"]
    rows += [_row(name + (" **(selected)**" if name == best else ""), a, s, t) for name, a in agg.items()]
    rows += [_row(f"*{name} (source-only, before adaptation)*", a, s, t) for name, a in reference.items()]
    wall = time.time() - start
    env = {"seeds": args.seeds, "iters": protocol.iters, "warm_starts": [str(w.run_dir) for w in warm],
           "wall_seconds_this_invocation": round(wall),
           # a rerun that only rebuilds the report keeps the invocation that trained
           "wall_seconds_longest_invocation": round(longest_wall(out / f"{name}.json", wall)),
           "jobs": args.jobs,
           "train_seconds_all_runs": round(train_seconds(runs))}
    out.mkdir(parents=True, exist_ok=True)
    plotter = plot_eps_sweep if args.method == "apoda" else plot_dacs_radius
    png = plotter(agg, reference, s, t, out / f"{name}_eps.png", args.dataset)
    if args.method == "apoda":
        what = (f"APODA (AdaptSegNet + perturbation defense), {protocol.iters} adaptation iterations from one "
                f"source-only warm start, seeds {args.seeds} per variant")
    else:
        what = (f"DACS with and without the perturbation add-on at three relative radii, {protocol.iters} adaptation "
                f"iterations from the comparison's warm starts (one per seed, seeds {args.seeds}: the spread covers "
                "the whole pipeline); the no-add-on and eps 0.1 rows are the comparison's dacs and dacs+perturbation "
                "runs")
    md = [f"# {'APODA' if args.method == 'apoda' else 'DACS radius'} ablations on {args.dataset}", "",
          f"{what} (mean ± std over seeds). Selection, with no target label: the highest source-domain test mIoU "
          f"({s}); among variants within {args.tolerance} points of it, the lowest mean prediction entropy on the "
          f"unlabelled target ({t} images, labels unused). Target mIoU is shown, not used.", "", *rows, ""]
    diffs: dict[str, dict] = {}
    if args.method == "dacs":  # each radius against DACS of the same seed (same warm start), as in the comparison
        sfx = " +aug" if on else ""
        pairs = [(r + sfx, "dacs" + sfx) for r in DACS_RADII if r != "dacs"]
        diffs = {split: paired_differences(runs, pairs, split) for split in (t, s)}
        for split, d in diffs.items():
            md += [f"## Paired differences against DACS on {split} (seed by seed)", "", differences_table(d, split), ""]
    if png:
        md += [f"![eps sweep]({png.name})", ""]
    _, md_path = write_results(out, name, {"environment": {**environment(), **env}, "results": agg,
                                           "warm_start": reference, "selected": best,
                                           **({"paired_differences": diffs} if diffs else {})}, "\n".join(md))
    print(md_path.read_text())
    return 0
