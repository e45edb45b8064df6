"""Method comparison benchmark: same backbone, input size, iterations and warm start for every method;
several seeds; with and without photometric augmentation; final checkpoints only.

Each run is a subprocess ``python -m uda_perturb train ...`` (one thread each, ``--jobs`` at a time), so
runs are isolated and a restarted benchmark skips runs whose ``results.json`` exists. Used by
``benchmarks/compare.py``, ``benchmarks/ablate.py`` and ``uda-perturb bench``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

PHOTOMETRIC_KEYS = ("data.source.transforms.photometric", "data.target.transforms.photometric")


def photometric(on: bool) -> list[str]:
    """Overrides that switch photometric augmentation on or off for both training domains."""
    return [f"{k}={str(on).lower()}" for k in PHOTOMETRIC_KEYS]


@dataclass
class Run:
    """One training run of the benchmark: a label, recipe overrides, and where it writes."""

    label: str
    overrides: list[str]
    run_dir: Path
    seed: int = 0
    group: str = ""
    tags: dict = field(default_factory=dict)

    def done(self) -> bool:
        """Whether the run already finished (its results file exists)."""
        return (self.run_dir / "results.json").is_file()


def launch(recipe: str, run: Run, log_dir: Path, threads: int = 1) -> float:
    """Train one run in a subprocess unless it already finished; returns its wall time in seconds."""
    if run.done():
        return 0.0
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "uda_perturb", "train", recipe, "--run-dir", str(run.run_dir), "--no-progress",
           "--overwrite"]
    for o in run.overrides + [f"seed={run.seed}"]:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.time()
    with open(log_dir / f"{run.run_dir.name}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"run {run.run_dir.name} failed (exit {proc.returncode}); see {log_dir}")
    return time.time() - start


def run_all(recipe: str, runs: Sequence[Run], jobs: int, log_dir: Path) -> float:
    """Run everything, ``jobs`` at a time; returns the wall time."""
    start = time.time()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for fut in [pool.submit(launch, recipe, r, log_dir) for r in runs]:
            fut.result()
    return time.time() - start


def load_results(run: Run) -> dict:
    """The final evaluation results of a finished run."""
    return json.loads((run.run_dir / "results.json").read_text())["results"]


def train_seconds(runs: Sequence[Run]) -> float:
    """Training compute of finished runs: the sum of their ``train_seconds`` records."""
    return sum(json.loads((r.run_dir / "results.json").read_text()).get("train_seconds", 0.0) for r in runs)


def aggregate(runs: Sequence[Run]) -> dict[str, dict]:
    """``{label: {split: {metric: (mean, std, n)}, "iou": {split: {class: (mean, std)}}}}`` over seeds."""
    by_label: dict[str, list[dict]] = {}
    for r in runs:
        by_label.setdefault(r.label, []).append(load_results(r))
    out: dict[str, dict] = {}
    for label, results in by_label.items():
        agg: dict[str, Any] = {"seeds": len(results)}
        for split in results[0]:
            metrics = {k: [res[split].get(k) for res in results] for k in results[0][split]
                       if k.startswith("miou") or k == "mean_entropy"}
            agg[split] = {k: _stats(v) for k, v in metrics.items()}
            agg[split]["iou"] = {c: _stats([res[split]["iou"][c] for res in results])
                                 for c in results[0][split]["iou"]}
        out[label] = agg
    return out


def _stats(values: Sequence[Optional[float]]) -> dict[str, float]:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    v = v[~np.isnan(v)]
    return {"mean": float(v.mean()) if len(v) else float("nan"), "std": float(v.std()) if len(v) > 1 else 0.0,
            "n": int(len(v))}


def select_variant(agg: dict[str, dict], source: str, target: str, tolerance: float = 0.5) -> str:
    """The variant chosen without target labels: the best mean mIoU on the labelled ``source`` split; among
    variants within ``tolerance`` points of it, the lowest mean prediction entropy on the unlabelled
    ``target`` images (a variant without an entropy record counts as 0, i.e. it wins ties)."""
    top = max(a[source]["miou"]["mean"] for a in agg.values())
    close = [k for k, a in agg.items() if a[source]["miou"]["mean"] >= top - tolerance]
    return min(close, key=lambda k: agg[k][target].get("mean_entropy", {"mean": 0.0})["mean"])


def summary_table(agg: dict[str, dict], split: str, groups: Sequence[str], extra_split: Optional[str] = None) -> str:
    """Markdown: mean ± std per method of mIoU and class-group mIoUs on ``split`` (+ mIoU on ``extra_split``)."""
    cols = ["miou"] + [f"miou_{g}" for g in groups]
    head = "| method | seeds | " + " | ".join(f"{split} {c}" for c in cols)
    head += f" | {extra_split} miou |" if extra_split else " |"
    lines = [head, "|" + "---|" * (2 + len(cols) + (1 if extra_split else 0))]
    for label, a in agg.items():
        cells = [mean_std(a[split][c]) for c in cols]
        if extra_split:
            cells.append(mean_std(a[extra_split]["miou"]))
        lines.append(f"| {label} | {a['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(agg: dict[str, dict], split: str) -> str:
    """Markdown: per-class IoU (mean ± std over seeds) of every method on ``split``."""
    classes = list(next(iter(agg.values()))[split]["iou"])
    lines = ["| method | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 1)]
    for label, a in agg.items():
        lines.append(f"| {label} | " + " | ".join(mean_std(a[split]["iou"][c], 1) for c in classes) + " |")
    return "\n".join(lines)


def mean_std(s: dict, digits: int = 1) -> str:
    """``"mean ± std"`` of one aggregated metric (just the mean for a single seed, ``-`` when undefined)."""
    if s["mean"] != s["mean"]:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s.get("n", 1) > 1 else f"{s['mean']:.{digits}f}"


def plot(agg: dict[str, dict], split: str, path: Path, title: str) -> Optional[Path]:
    """Bar plot of per-class IoU by method; ``None`` when matplotlib is missing."""
    try:
        from .visualize import iou_bar_plot
    except ImportError:
        return None
    means = {label: {c: s["mean"] for c, s in a[split]["iou"].items()} for label, a in agg.items()}
    errs = {label: {c: s["std"] for c, s in a[split]["iou"].items()} for label, a in agg.items()}
    try:
        return iou_bar_plot(means, path, title, errs)
    except ImportError:
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``uda-perturb bench ...``: forwards to benchmarks/compare.py's argument parser."""
    from .bench_compare import main as compare_main

    return compare_main(argv)
