"""The comparison benchmark (``benchmarks/compare.py``, ``uda-perturb bench``): CamVid day -> dusk or the
synthetic scenes; source-only, AdaptSegNet, ADVENT (AdvEnt+MinEnt), APODA and ADVENT + perturbation, each
with and without photometric augmentation, over seeds, from a shared source-only warm start."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .bench import Run, aggregate, per_class_table, photometric, plot, run_all, summary_table, train_seconds

D = "ndf: 32"
METHODS = {
    "source_only": ["method.name=source_only"],
    "source_only+targetBN": ["method.name=source_only", "method.options={target_bn_stats: true}"],
    "adaptsegnet": ["method.name=adaptsegnet", f"method.options={{{D}}}"],
    "advent": ["method.name=advent", f"method.options={{{D}, minent_weights: [0.001]}}"],
    "apoda": ["method.name=apoda", f"method.options={{{D}}}"],
    "advent+perturbation": ["method.name=advent", f"method.options={{{D}, minent_weights: [0.001]}}",
                            "method.addons=[perturbation]"],
}
SETUPS = {
    "camvid": {"recipe": "camvid_day2dusk", "target": "target_dusk", "source": "source_test",
               "groups": ["tail", "head"], "pretrain_iters": 3000, "iters": 500, "batch": 4, "pretrain_batch": 8},
    "synthetic": {"recipe": "synthetic_demo", "target": "target_test", "source": "source_test",
                  "groups": ["tail", "head"], "pretrain_iters": 1500, "iters": 400, "batch": 4, "pretrain_batch": 8},
}


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the comparison."""
    ap = argparse.ArgumentParser(prog="compare", description=__doc__)
    ap.add_argument("--dataset", choices=sorted(SETUPS), default="camvid")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                    help="source_only+targetBN is a control: source-only whose BatchNorm statistics also see "
                         "target batches, as every adversarial method's do")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--aug", choices=["both", "off", "on"], default="both",
                    help="photometric augmentation (brightness/contrast/gamma) during all training")
    ap.add_argument("--pretrain-iters", type=int, help="source-only warm start iterations")
    ap.add_argument("--iters", type=int, help="adaptation iterations after the warm start")
    ap.add_argument("--adapt-lr", type=float, default=0.0025)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra recipe override")
    ap.add_argument("--quick", action="store_true", help="a few iterations, one seed: a smoke test")
    ap.add_argument("--work-dir", default="runs/bench")
    ap.add_argument("--results-dir", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "results"))
    ap.add_argument("--name", help="results file stem (default compare_<dataset>)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Warm starts, then every (method, augmentation arm, seed) run, then the report."""
    args = build_parser().parse_args(argv)
    setup: dict[str, Any] = SETUPS[args.dataset]
    pre_iters = args.pretrain_iters or (20 if args.quick else setup["pretrain_iters"])
    iters = args.iters or (10 if args.quick else setup["iters"])
    seeds = args.seeds[:1] if args.quick else args.seeds
    name = args.name or f"compare_{args.dataset}" + ("_quick" if args.quick else "")
    work = Path(args.work_dir) / name
    arms = {"off": [False], "on": [True], "both": [False, True]}[args.aug]
    common = ["data.num_workers=0", "train.checkpoint_every=0",
              "train.eval_every=0", *args.overrides]
    if args.quick and args.dataset == "synthetic":
        common += ["data.eval.target_test.options.length=8", "data.eval.source_test.options.length=8"]

    pretrain = {on: Run(f"warm start{' +aug' if on else ''}",
                        common + photometric(on) + ["method.name=source_only", f"train.iters={pre_iters}",
                                                    "train.lr=0.01", f"data.batch_size={setup['pretrain_batch']}"],
                        work / f"pretrain_{'aug' if on else 'plain'}") for on in arms}
    runs = []
    for on in arms:
        weights = pretrain[on].run_dir / "segmentor.pt"
        for m in args.methods:
            for s in seeds:
                label = m + (" +aug" if on else "")
                runs.append(Run(label, common + photometric(on) + METHODS[m] +
                                [f"model.weights={weights}", f"train.iters={iters}", f"train.lr={args.adapt_lr}",
                                 f"data.batch_size={setup['batch']}"],
                                work / f"{m.replace('+', '_')}_{'aug' if on else 'plain'}_s{s}", s))
    start = time.time()
    logs = work / "logs"
    run_all(setup["recipe"], list(pretrain.values()), args.jobs, logs)
    run_all(setup["recipe"], runs, args.jobs, logs)
    wall = time.time() - start
    everything = list(pretrain.values()) + runs
    agg = aggregate(everything)
    report(args, setup, agg, name, pre_iters, iters, seeds, wall, train_seconds(everything))
    return 0


def report(args: argparse.Namespace, setup: dict, agg: dict, name: str, pre_iters: int, iters: int,
           seeds: Sequence[int], wall: float, compute: float) -> None:
    """Write markdown, JSON and the bar plot under the results folder."""
    import torchvision

    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    t, s, g = setup["target"], setup["source"], setup["groups"]
    env = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "python": platform.python_version(),
           "torch": torch.__version__, "torchvision": torchvision.__version__, "machine": platform.machine(),
           "cpus": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"),
           "wall_seconds_this_invocation": round(wall), "jobs": args.jobs,
           "train_seconds_all_runs": round(compute),
           "estimated_wall_seconds_from_scratch": round(compute / max(args.jobs, 1)),
           "seeds": list(seeds), "warm_start_iters": pre_iters, "adapt_iters": iters, "recipe": setup["recipe"],
           "overrides": args.overrides}
    png = plot(agg, t, out / f"{name}.png", f"{args.dataset}: per-class IoU on {t} (mean over seeds)")
    md = [f"# Comparison on {args.dataset} ({setup['recipe']})", "",
          f"Every method starts from the same source-only warm start ({pre_iters} iterations, batch "
          f"{setup['pretrain_batch']}, one per augmentation arm) and adapts for {iters} iterations (batch "
          f"{setup['batch']} + {setup['batch']}) at lr {args.adapt_lr}; seeds {list(seeds)} vary the adaptation "
          "(data order, discriminator init, attack randomness). Final checkpoints only; no selection on target "
          "labels. IoU in percent, mean ± std over seeds.", "",
          f"## Summary ({t} = target, {s} = source-domain test)", "", summary_table(agg, t, g, s), "",
          f"## Per-class IoU on {t}", "", per_class_table(agg, t), "",
          f"## Per-class IoU on {s}", "", per_class_table(agg, s), ""]
    if png:
        md += [f"![per-class IoU]({png.name})", ""]
    md += ["## Environment", ""] + [f"- {k}: `{v}`" for k, v in env.items()]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    (out / f"{name}.json").write_text(json.dumps({"environment": env, "results": agg}, indent=2))
    print("\n".join(md))
