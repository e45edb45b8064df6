"""The README's main job, on the embedded synthetic day -> dusk scenes, as the method is meant to be used: per seed,
a source-only warm start, then APODA adapts from it, beside source-only trained on for as long and the control
whose BatchNorm statistics merely see dusk batches; per-class IoU on the dusk and day test splits, and a reading
that names a difference as a finding only where it exceeds twice its spread over the seeds.

The demo sets its own thread count (2 by default, and says so): the float sums of a training run depend on it,
so with the same torch build and thread count every machine gives the same numbers (a CPU with other vector
units can still differ in the last digits).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from .config import load_config
from .engine import Trainer

DEMO_THREADS = 2
DEMO_SEEDS = (0, 1, 2)
DEMO_SIZE = (64, 96)  # three seeds in about two minutes on 2 cores (96x128, the recipe's size: about 6 minutes)
SIZE_KEYS = ("data.source", "data.target", "data.eval.target_test", "data.eval.source_test")
DEMO_METHODS = {
    "source_only": [],
    # the control that separates what adaptation gains from BatchNorm statistics seeing dusk batches
    "bn_control": ["method.name=source_only", "method.options={target_bn_stats: true}"],
    "apoda": ["method.options={ndf: 16, perturbation: {eps: 0.1, eps_mode: relative}}"],
}
# (row, baseline) pairs the reading measures, paired seed by seed
PAIRS = (("apoda", "source_only"), ("bn_control", "source_only"), ("apoda", "bn_control"))
SPLITS = {"target_test": "dusk", "source_test": "day"}

Results = dict[str, dict[str, dict]]  # {row: {split: metrics}} of one seed


def paired(per_seed: dict[int, Results], row: str, base: str, split: str) -> list[float]:
    """``row - base`` mIoU on ``split``, one value per seed."""
    return [r[row][split]["miou"] - r[base][split]["miou"] for r in per_seed.values()]


def spread(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, sample std)``; the std is ``nan`` for one value (unknown, not zero)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def is_finding(values: Sequence[float]) -> bool:
    """A difference beyond twice its spread over at least two seeds."""
    m, s = spread(values)
    return len(values) >= 2 and abs(m) > 2 * s


def reading(per_seed: dict[int, Results]) -> str:
    """What the numbers say, paired seed by seed: each difference with its spread, and which are findings."""
    n = len(per_seed)
    found: list[str] = []
    within: list[str] = []
    for row, base in PAIRS:
        for split, name in SPLITS.items():
            values = paired(per_seed, row, base, split)
            m, s = spread(values)
            text = f"{row} - {base} on {name} {m:+.1f}" + ("" if math.isnan(s) else f" ± {s:.1f}")
            (found if is_finding(values) else within).append(text)
    line = f"Read it as (mIoU points, paired by seed, mean ± std over {n} seed{'s' if n > 1 else ''}): "
    line += ("findings beyond twice their spread: " + "; ".join(found) + ". " if found else
             "no difference exceeds twice its spread. ")
    if within:
        line += "Within the spread, so not findings: " + "; ".join(within) + "."
    if n < 2:
        line += " One seed measures no spread: run with several seeds before reading a difference."
    return line


def comparison_table(per_seed: dict[int, Results], split: str) -> str:
    """Markdown: one row per method with per-class IoU, mIoU and class-group mIoUs on ``split``, each the mean over
    the seeds (mIoU with its std)."""
    seeds = list(per_seed.values())
    first = seeds[0]["warm_start"][split]
    classes = list(first["iou"])
    groups = [k for k in first if k.startswith("miou_")]
    head = "| method | " + " | ".join(classes) + " | mIoU | " + " | ".join(groups) + " |"
    lines = [head, "|" + "---|" * (len(classes) + 2 + len(groups))]
    for method in seeds[0]:
        rows = [r[method][split] for r in seeds]
        m, s = spread([r["miou"] for r in rows])
        cells = [_mean([r["iou"][c] for r in rows]) for c in classes]
        cells += [f"{m:.1f}" + ("" if math.isnan(s) else f" ± {s:.1f}")] + [_mean([r[g] for r in rows]) for g in groups]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean(values: Sequence[Optional[float]]) -> str:
    """The mean to one decimal, or '-' where a seed has no value (a class absent from its test split)."""
    if any(v is None for v in values):
        return "-"
    return f"{sum(values) / len(values):.1f}"  # type: ignore[arg-type]


def differences_table(per_seed: dict[int, Results]) -> str:
    """Markdown: each paired difference per split, with its per-seed values and whether it is a finding."""
    lines = ["| difference | split | mean ± std | per seed | finding (> 2 std) |", "|---|---|---|---|---|"]
    for row, base in PAIRS:
        for split, name in SPLITS.items():
            values = paired(per_seed, row, base, split)
            m, s = spread(values)
            lines.append(f"| {row} - {base} | {name} | {m:+.1f}" + ("" if math.isnan(s) else f" ± {s:.1f}")
                         + f" | {', '.join(f'{v:+.1f}' for v in values)} | {'yes' if is_finding(values) else 'no'} |")
    return "\n".join(lines)


def report(per_seed: dict[int, Results], iters: int, adapt: int, threads: int) -> str:
    """The demo's markdown: protocol, reading, differences, and per-class tables on both test splits."""
    return "\n".join([
        "# Demo: synthetic day -> dusk, lite backbone", "",
        f"Per seed ({', '.join(map(str, per_seed))}): a source-only warm start ({iters} iterations), then {adapt} "
        f"more iterations of each method from it, on {DEMO_SIZE[0]}x{DEMO_SIZE[1]} images. {threads} torch threads, "
        "set by the demo. IoU in percent on held-out test images, final checkpoints, means over the seeds.", "",
        reading(per_seed), "", "## Paired differences", "", differences_table(per_seed), "",
        "## Target (dusk) test", "", comparison_table(per_seed, "target_test"), "",
        "## Source (day) test", "", comparison_table(per_seed, "source_test")])


def _train(overrides: list[str], run_dir: Path, overwrite: bool, progress: bool) -> dict[str, dict]:
    size = [f"{key}.options.size=[{DEMO_SIZE[0]}, {DEMO_SIZE[1]}]" for key in SIZE_KEYS]
    trainer = Trainer(load_config("synthetic_demo", size + overrides), run_dir, overwrite=overwrite, progress=progress)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def one_seed(out: Path, seed: int, iters: int, adapt: int, overwrite: bool, progress: bool) -> Results:
    """The warm start and every method of one seed."""
    results = {"warm_start": _train(["method.name=source_only", f"train.iters={iters}", f"seed={seed}"],
                                    out / "warm_start", overwrite, progress)}
    warm = str((out / "warm_start" / "segmentor.pt").resolve())
    for row, extra in DEMO_METHODS.items():
        results[row] = _train([f"method.name={row}", f"train.iters={adapt}", f"seed={seed}",
                               f"model.weights={warm}", *extra], out / row, overwrite, progress)
    return results


def run_demo(out_dir: str | Path = "runs/demo", iters: int = 300, seeds: Sequence[int] = DEMO_SEEDS,
             progress: bool = True, overwrite: bool = True, adapt_iters: Optional[int] = None,
             threads: int = DEMO_THREADS) -> dict[int, Results]:
    """For each seed, warm-start source-only for ``iters`` iterations, then train each method from it for
    ``adapt_iters`` (default ``iters // 3``), with ``threads`` torch threads; print and save the comparison
    (``comparison.md``, ``comparison.json``). Returns ``{seed: {row: {split: metrics}}}`` with rows
    ``warm_start`` and each of ``DEMO_METHODS``."""
    out = Path(out_dir)
    adapt = adapt_iters or max(iters // 3, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    print(f"demo: {threads} torch threads (set so that its numbers are the same on every machine with this torch "
          f"build), seeds {', '.join(map(str, seeds))}", flush=True)
    try:
        per_seed = {seed: one_seed(out / f"seed{seed}", seed, iters, adapt, overwrite, progress) for seed in seeds}
    finally:
        torch.set_num_threads(before)
    text = report(per_seed, iters, adapt, threads)
    (out / "comparison.md").write_text(text + "\n")
    (out / "comparison.json").write_text(json.dumps(strip(per_seed), indent=2))
    print(text)
    print(f"\nwritten to {out / 'comparison.md'}")
    return per_seed


def strip(per_seed: dict[int, Results]) -> dict:
    """The results without their rendered tables (JSON-ready; seeds as strings)."""
    return {str(seed): {m: {s: {k: v for k, v in r.items() if k != "table"} for s, r in res.items()}
                        for m, res in results.items()} for seed, results in per_seed.items()}
