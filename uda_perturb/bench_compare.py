"""The comparison benchmark (``benchmarks/compare.py``, ``uda-perturb bench``): CamVid day -> dusk (from
scratch, or on pretrained features with a held-out dusk evaluation) or the synthetic scenes; source-only,
the BatchNorm control, AdaptSegNet, ADVENT (AdvEnt+MinEnt), APODA, APODA with the random control, DACS,
DACS + perturbation and ADVENT + perturbation, with and without photometric augmentation, over seeds. Each
seed has its own source-only warm start (``--shared-warm-start`` for the old protocol), so the spread covers
the whole pipeline; the report has a cost column (seconds per iteration / source-only's)."""
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
    # APODA with a random direction at the same per-position radius: does the adversarial direction matter?
    "apoda+random": ["method.name=apoda",
                     f"method.options={{{D}, perturbation: {{source_attacks: [random], target_attacks: [random]}}}}"],
    "dacs": ["method.name=dacs"],
    "dacs+perturbation": ["method.name=dacs", "method.addons=[perturbation]"],
}
DEFAULT_METHODS = ["source_only", "source_only+targetBN", "adaptsegnet", "advent", "apoda", "advent+perturbation"]
CAMVID = "../shared/data/camvid"
_DUSK = f"name: camvid, root: {CAMVID}, split: train"
# CamVid protocol: adapt on the first 40 dusk frames, evaluate on the last 22 (and on all 62 beside it)
HELD_OUT_DUSK = [
    "data.target.options={sequences: [0001TP], labelled: false, frames: [6690, 7860]}",
    f"data.eval={{target_dusk_heldout: {{{_DUSK}, options: {{sequences: [0001TP], frames: [7890, 8520]}}, "
    f"transforms: {{normalize: inception}}}}, target_dusk: {{{_DUSK}, options: {{sequences: [0001TP]}}, "
    f"transforms: {{normalize: inception}}}}, source_test: {{name: camvid, root: {CAMVID}, split: test, "
    f"transforms: {{normalize: inception}}}}}}",
]
SETUPS: dict[str, dict[str, Any]] = {
    "camvid": {"recipe": "camvid_day2dusk", "target": "target_dusk", "source": "source_test",
               "groups": ["tail", "head"], "pretrain_iters": 3000, "iters": 500, "batch": 4, "pretrain_batch": 8,
               "pretrain_lr": 0.01, "adapt_lr": 0.0025, "overrides": []},
    "camvid_pretrained": {"recipe": "camvid_day2dusk_pretrained", "target": "target_dusk_heldout",
                          "also": "target_dusk", "source": "source_test", "groups": ["tail", "head"],
                          "pretrain_iters": 600, "iters": 100, "batch": 4, "pretrain_batch": 8,
                          "pretrain_lr": None, "adapt_lr": 1.0e-4, "overrides": HELD_OUT_DUSK,
                          # the v2 method list; the augmented arm only, which the 2-hour budget allows
                          "methods": ["source_only", "source_only+targetBN", "adaptsegnet", "advent", "apoda",
                                      "apoda+random", "dacs", "dacs+perturbation", "advent+perturbation"],
                          "aug": "on"},
    "synthetic": {"recipe": "synthetic_demo", "target": "target_test", "source": "source_test",
                  "groups": ["tail", "head"], "pretrain_iters": 1500, "iters": 400, "batch": 4, "pretrain_batch": 8,
                  "pretrain_lr": 0.01, "adapt_lr": 0.0025, "overrides": []},
}


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the comparison."""
    ap = argparse.ArgumentParser(prog="compare", description=__doc__)
    ap.add_argument("--dataset", choices=sorted(SETUPS), default="camvid")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS),
                    help="source_only+targetBN is a control: source-only whose BatchNorm statistics also see "
                         "target batches, as every adversarial method's do (default: the setup's list)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--aug", choices=["both", "off", "on"],
                    help="photometric augmentation (brightness/contrast/gamma) during all training (default: "
                         "both arms, or the setup's)")
    ap.add_argument("--pretrain-iters", type=int, help="source-only warm start iterations")
    ap.add_argument("--iters", type=int, help="adaptation iterations after the warm start")
    ap.add_argument("--adapt-lr", type=float, help="adaptation lr (default: the setup's)")
    ap.add_argument("--shared-warm-start", action="store_true", help="one warm start for all seeds (the first "
                    "protocol; its spread then misses the warm start's variance)")
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
    args.methods = args.methods or setup.get("methods", DEFAULT_METHODS)
    args.aug = args.aug or setup.get("aug", "both")
    arms = {"off": [False], "on": [True], "both": [False, True]}[args.aug]
    common = ["data.num_workers=0", "train.checkpoint_every=0",
              "train.eval_every=0", *setup["overrides"], *args.overrides]
    if args.quick and args.dataset == "synthetic":
        common += ["data.eval.target_test.options.length=8", "data.eval.source_test.options.length=8"]
    adapt_lr = args.adapt_lr if args.adapt_lr is not None else setup["adapt_lr"]
    pre_lr = [f"train.lr={setup['pretrain_lr']}"] if setup["pretrain_lr"] is not None else []
    warm_seeds = seeds[:1] if args.shared_warm_start else seeds

    def arm(on: bool) -> str:
        return "aug" if on else "plain"

    pretrain = {(on, s): Run(f"warm start{' +aug' if on else ''}",
                             common + photometric(on) + ["method.name=source_only", f"train.iters={pre_iters}",
                                                         *pre_lr, f"data.batch_size={setup['pretrain_batch']}"],
                             work / f"pretrain_{arm(on)}" if args.shared_warm_start else
                             work / f"pretrain_{arm(on)}_s{s}", s) for on in arms for s in warm_seeds}
    runs = []
    for on in arms:
        for m in args.methods:
            for s in seeds:
                warm = pretrain[(on, s if not args.shared_warm_start else seeds[0])]
                label = m + (" +aug" if on else "")
                runs.append(Run(label, common + photometric(on) + METHODS[m] +
                                [f"model.weights={warm.run_dir / 'segmentor.pt'}", f"train.iters={iters}",
                                 f"train.lr={adapt_lr}", f"data.batch_size={setup['batch']}"],
                                work / f"{m.replace('+', '_')}_{arm(on)}_s{s}", s, tags={"iters": iters}))
    start = time.time()
    logs = work / "logs"
    run_all(setup["recipe"], list(pretrain.values()), args.jobs, logs)
    run_all(setup["recipe"], runs, args.jobs, logs)
    wall = time.time() - start
    everything = list(pretrain.values()) + runs
    agg = aggregate(everything)
    costs = relative_cost(runs, iters)
    report(args, setup, agg, name, pre_iters, iters, seeds, wall, train_seconds(everything), costs, adapt_lr)
    return 0


def relative_cost(runs: Sequence[Run], iters: int) -> dict[str, dict[str, float]]:
    """Per label: mean training seconds per iteration, and its ratio to source-only's in the same arm (the
    runs of one invocation share the machine, so the ratio is the comparable number)."""
    per: dict[str, list[float]] = {}
    for r in runs:
        rec = json.loads((r.run_dir / "results.json").read_text())
        per.setdefault(r.label, []).append(rec.get("train_seconds", 0.0) / max(iters, 1))
    out = {}
    for label, values in per.items():
        mean = sum(values) / len(values)
        base_label = "source_only" + (" +aug" if label.endswith(" +aug") else "")
        base = per.get(base_label)
        ratio = mean / (sum(base) / len(base)) if base else float("nan")
        out[label] = {"seconds_per_iter": round(mean, 3), "relative_to_source_only": round(ratio, 2)}
    return out


def report(args: argparse.Namespace, setup: dict, agg: dict, name: str, pre_iters: int, iters: int,
           seeds: Sequence[int], wall: float, compute: float, costs: dict, adapt_lr: float) -> None:
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
           "overrides": args.overrides, "shared_warm_start": args.shared_warm_start}
    png = plot(agg, t, out / f"{name}.png", f"{args.dataset}: per-class IoU on {t} (mean over seeds)")
    warm = ("one source-only warm start per augmentation arm, shared by the seeds" if args.shared_warm_start else
            "a source-only warm start per seed and augmentation arm, so seeds vary the whole pipeline")
    md = [f"# Comparison on {args.dataset} ({setup['recipe']})", "",
          f"Every method starts from {warm} ({pre_iters} iterations, batch {setup['pretrain_batch']}) and adapts "
          f"for {iters} iterations (batch {setup['batch']} + {setup['batch']}) at lr {adapt_lr}; seeds "
          f"{list(seeds)}. Final checkpoints only; no selection on target labels. IoU in percent, mean ± std "
          "over seeds.", "",
          f"## Summary ({t} = target, {s} = source-domain test)", "", summary_table(agg, t, g, s), ""]
    if setup.get("also"):
        a = setup["also"]
        md += [f"## Summary on {a} (every target frame, those adapted on included)", "",
               summary_table(agg, a, g), ""]
    md += ["## Cost (training seconds per iteration, same invocation)", "", "| method | s/iter | / source-only |",
           "|---|---|---|"] + [f"| {k} | {v['seconds_per_iter']:.3f} | {v['relative_to_source_only']:.2f} |"
                               for k, v in costs.items()] + [""]
    md += [f"## Per-class IoU on {t}", "", per_class_table(agg, t), "",
           f"## Per-class IoU on {s}", "", per_class_table(agg, s), ""]
    if png:
        md += [f"![per-class IoU]({png.name})", ""]
    md += ["## Environment", ""] + [f"- {k}: `{v}`" for k, v in env.items()]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    (out / f"{name}.json").write_text(json.dumps({"environment": env, "results": agg, "cost": costs}, indent=2))
    print("\n".join(md))
