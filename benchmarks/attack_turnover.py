"""Which attack objective a step follows as the discriminator trains, under each combination rule.

Trains APODA on the embedded ``synthetic_demo`` recipe with ``objective_stats: true`` (the per-objective
statistics under ``sum`` too) for each rule and seed, and reads from ``metrics.jsonl`` every 10 iterations: each
objective's gradient-norm share, the step's cosine with its direction, and its loss rise at f*. Writes
``attack_turnover.md/.json/.png`` under ``benchmarks/results`` (``--force`` to replace them).

    python benchmarks/attack_turnover.py --seeds 0 1 --iters 150 --work-dir runs/turnover
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uda_perturb.bench.report import (
    add_results_options,
    check_replace,
    pyplot,
    results_folder,
    save_figure,
    write_results,
)
from uda_perturb.config import load_config
from uda_perturb.engine import Trainer

STEM = "attack_turnover"
SIDES, OBJECTIVES, STATS = ("source", "target"), ("classifier", "discriminator"), ("share", "cos", "rise")


def train(rule: str, seed: int, iters: int, folder: Path) -> list[dict]:
    """One APODA run (reused when its metrics are complete); its logged records with attack statistics."""
    metrics = folder / "metrics.jsonl"
    if not (folder / "segmentor.pt").is_file():
        cfg = load_config("synthetic_demo", ["method.name=apoda", f"seed={seed}", f"train.iters={iters}",
                                             "data.eval={}", f"method.options={{perturbation: {{combine: {rule}, "
                                             "objective_stats: true}}"])
        Trainer(cfg, folder, overwrite=True, progress=False).fit()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r for r in rows if "perturb/source_classifier_share" in r]


def summary(records: dict[str, dict[int, list[dict]]]) -> dict:
    """Per rule, seed and logged iteration: every side/objective/statistic."""
    return {rule: {seed: [{"iteration": r["iteration"], **{f"{s}_{o}_{k}": r.get(f"perturb/{s}_{o}_{k}")
                                                           for s in SIDES for o in OBJECTIVES for k in STATS}}
                          for r in rows] for seed, rows in by_seed.items()} for rule, by_seed in records.items()}


def markdown(data: dict) -> str:
    lines = ["# Which objective the attack step follows as D trains (synthetic_demo, APODA)", "",
             "Per logged iteration: D's gradient-norm share (what a plain `sum` hears of it), the step's cosine with "
             "D's direction and with the classifier's, and the rise of D's loss at f* over clean. Source side.", ""]
    for rule, by_seed in data.items():
        for seed, rows in by_seed.items():
            lines += [f"## `combine: {rule}`, seed {seed}", "",
                      "| iteration | D share | cos(step, D) | cos(step, classifier) | D rise | classifier rise |",
                      "|---|---|---|---|---|---|"]
            for r in rows:
                cells = [r["source_discriminator_share"], r["source_discriminator_cos"], r["source_classifier_cos"],
                         r["source_discriminator_rise"], r["source_classifier_rise"]]
                lines.append(f"| {r['iteration']} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells)
                             + " |")
            lines.append("")
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(data), figsize=(5 * len(data), 3.4), squeeze=False)
    for ax, (rule, by_seed) in zip(axes[0], data.items()):
        for seed, rows in by_seed.items():
            its = [r["iteration"] for r in rows]
            ax.plot(its, [r["source_discriminator_share"] for r in rows], label=f"D share, seed {seed}")
            ax.plot(its, [r["source_discriminator_cos"] for r in rows], "--", label=f"cos(step, D), seed {seed}")
        ax.set_title(f"combine: {rule} (source side)")
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.5, 1.05)
        ax.legend(fontsize=7)
    save_figure(plt, fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", nargs="+", default=["sum", "balanced"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--work-dir", default="runs/turnover")
    add_results_options(ap)
    args = ap.parse_args(argv)
    out = results_folder(args, Path(__file__).resolve().parent / "results")
    check_replace(args, out, STEM, [f"{STEM}.png"])
    records = {rule: {seed: train(rule, seed, args.iters, Path(args.work_dir) / f"{rule}_s{seed}")
                      for seed in args.seeds} for rule in args.rules}
    data = summary(records)
    write_results(out, STEM, {"iters": args.iters, "seeds": args.seeds, "runs": data}, markdown(data))
    plot(data, out / f"{STEM}.png")
    print(f"wrote {out / (STEM + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
