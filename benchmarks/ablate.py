"""APODA ablations: attack objectives alone and combined, eps sweep (relative and absolute), steps 1 vs 3,
L2 vs Linf, discriminator on outputs vs on features, target defense weight. Same protocol as compare.py
(shared source-only warm start, final checkpoints).

Defaults are chosen on the source-domain test split and never on target labels: the target mIoU columns
are reported for information only.

    python benchmarks/ablate.py --dataset camvid --iters 300
    python benchmarks/ablate.py --dataset synthetic
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from uda_perturb.bench import Run, aggregate, mean_std, run_all, select_variant, train_seconds
from uda_perturb.bench_compare import SETUPS

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


def dacs_variants() -> dict[str, list[str]]:
    """Name -> overrides of the DACS radius ablation: no add-on, and the add-on at three relative radii."""
    v = {"dacs (no add-on)": ["method.name=dacs"]}
    for e in (0.05, 0.1, 0.2):
        v[f"dacs + perturbation, eps {e} relative"] = [
            "method.name=dacs", f"method.addons=[{{name: perturbation, eps: {e}, eps_mode: relative}}]"]
    return v


def to_yaml(d: dict) -> str:
    return json.dumps(d)  # JSON is valid YAML flow syntax


def _entropy(a: dict, split: str) -> str:
    return mean_std(a[split]["mean_entropy"]) if "mean_entropy" in a[split] else "-"


def plot_eps_sweep(agg: dict, reference: dict, source: str, target: str, path: Path, title: str) -> Path | None:
    """mIoU against eps (relative and absolute radii side by side); ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
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
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(SETUPS), default="camvid")
    ap.add_argument("--iters", type=int)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="adaptation seeds per variant")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work-dir", default="runs/bench")
    ap.add_argument("--warm-start", help="segmentor.pt to start from (default: compare.py's plain warm start, "
                                         "trained here if missing)")
    ap.add_argument("--tolerance", type=float, default=0.5,
                    help="source-test mIoU points within which the target entropy breaks the tie")
    ap.add_argument("--name", help="results file stem (default ablate_<dataset>)")
    ap.add_argument("--only", nargs="*", help="substrings of variant names to run")
    ap.add_argument("--method", choices=["apoda", "dacs"], default="apoda",
                    help="apoda: the APODA variants; dacs: the perturbation add-on's radius on DACS")
    args = ap.parse_args()
    setup = SETUPS[args.dataset]
    iters = args.iters or setup["iters"]
    work = Path(args.work_dir) / f"ablate_{args.method}_{args.dataset}"
    common = ["data.num_workers=0", "train.checkpoint_every=0", "train.eval_every=0", *setup["overrides"]]
    pre_lr = [f"train.lr={setup['pretrain_lr']}"] if setup["pretrain_lr"] is not None else []
    logs = work / "logs"
    start = time.time()
    pre = None
    if args.warm_start:
        weights = Path(args.warm_start)
    else:
        pre = Run("warm start", common + ["method.name=source_only", f"train.iters={setup['pretrain_iters']}",
                                          *pre_lr, f"data.batch_size={setup['pretrain_batch']}"],
                  Path(args.work_dir) / f"compare_{args.dataset}" / "pretrain_plain_s0")
        run_all(setup["recipe"], [pre], 1, logs)
        weights = pre.run_dir / "segmentor.pt"
    runs = []
    overrides: dict[str, list[str]] = {}
    if args.method == "dacs":
        overrides = dacs_variants()
    else:
        for name, pert in variants().items():
            pert = dict(pert)
            method_opts = {**BASE, **pert.pop("_method", {}), "perturbation": pert}
            overrides[name] = ["method.name=apoda", f"method.options={to_yaml(method_opts)}"]
    for i, (name, extra) in enumerate(overrides.items()):
        if args.only and not any(o in name for o in args.only):
            continue
        for seed in args.seeds:
            runs.append(Run(name, common + extra + [f"model.weights={weights}", f"train.iters={iters}",
                                                    f"train.lr={setup['adapt_lr']}",
                                                    f"data.batch_size={setup['batch']}"],
                            work / f"v{i:02d}_s{seed}", seed))
    run_all(setup["recipe"], runs, args.jobs, logs)
    agg = aggregate(runs)
    reference = aggregate([pre]) if pre is not None else {}
    t, s = setup["target"], setup["source"]
    best = select_variant(agg, s, t, args.tolerance)
    rows = ["| variant | seeds | source-test mIoU (selection) | source-test tail mIoU | target entropy (label-free, "
            "tie-break) | target mIoU | target tail mIoU | target head mIoU |", "|---|---|---|---|---|---|---|---|"]
    for name, a in agg.items():
        mark = " **(selected)**" if name == best else ""
        rows.append(f"| {name}{mark} | {a['seeds']} | {mean_std(a[s]['miou'])} | {mean_std(a[s]['miou_tail'])} | "
                    f"{_entropy(a, t)} | {mean_std(a[t]['miou'])} | {mean_std(a[t]['miou_tail'])} | "
                    f"{mean_std(a[t]['miou_head'])} |")
    for name, a in reference.items():  # the source-only warm start every variant begins from
        rows.append(f"| *{name} (source-only, before adaptation)* | 1 | {mean_std(a[s]['miou'])} | "
                    f"{mean_std(a[s]['miou_tail'])} | {_entropy(a, t)} | {mean_std(a[t]['miou'])} | "
                    f"{mean_std(a[t]['miou_tail'])} | {mean_std(a[t]['miou_head'])} |")
    import torchvision

    env = {"command": " ".join(["ablate.py", *sys.argv[1:]]), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "seeds": args.seeds, "iters": iters, "warm_start": str(weights),
           "wall_seconds_this_invocation": round(time.time() - start), "jobs": args.jobs,
           "train_seconds_all_runs": round(train_seconds(runs)), "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    name = args.name or (f"ablate_{args.dataset}" if args.method == "apoda" else f"ablate_dacs_{args.dataset}")
    png = plot_eps_sweep(agg, reference, s, t, out / f"{name}_eps.png", args.dataset)
    what = ("APODA (AdaptSegNet + perturbation defense)" if args.method == "apoda" else
            "DACS with and without the perturbation add-on at three radii")
    md = [f"# {'APODA' if args.method == 'apoda' else 'DACS radius'} ablations on {args.dataset}", "",
          f"{what}, {iters} adaptation iterations from the shared source-only "
          f"warm start, seeds {args.seeds} per variant (mean ± std over seeds; see compare results for the "
          "seed spread of the other methods). Selection, with no target label: the highest source-domain "
          f"test mIoU ({s}); among variants within {args.tolerance} points of it, the lowest mean prediction "
          f"entropy on the unlabelled target ({t} images, labels unused). Target mIoU is shown, not used.", "",
          *rows, ""]
    if png:
        md += [f"![eps sweep]({png.name})", ""]
    md += ["## Environment", "", *[f"- {k}: `{v}`" for k, v in env.items()]]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    (out / f"{name}.json").write_text(json.dumps({"environment": env, "results": agg,
                                                 "warm_start": reference, "selected": best}, indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
