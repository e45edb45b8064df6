"""What every benchmark writes: seed aggregates, markdown tables, plots, and the results files (markdown +
JSON) with the exact command, versions and machine."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..errors import UserError
from .runner import Run, load_results

DEFAULT_RESULTS = Path("benchmarks") / "results"


TIMING_VARIABLES = ("MALLOC_", "LD_PRELOAD", "OMP_", "MKL_", "KMP_")


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded next to every result; the command starts with the environment
    variables that change CPU timings (the allocator's, the thread pools') when any is set."""
    import torchvision

    tuned = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith(TIMING_VARIABLES)]
    return {
        "command": " ".join([*tuned, "python", *(shlex.quote(a) for a in sys.argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


class ResultsExistError(UserError, FileExistsError):
    """A benchmark would replace results files it was not asked to replace."""


def add_results_options(ap: argparse.ArgumentParser) -> None:
    """``--results-dir`` and ``--force``, shared by every benchmark."""
    ap.add_argument("--results-dir", help="where the results files go (default: benchmarks/results, where existing "
                                          "files are replaced only with --force); a folder given here is written to "
                                          "freely")
    ap.add_argument("--force", action="store_true",
                    help="replace existing results files in the default folder (a deliberate full run; the files "
                         "replaced are named)")


def results_folder(args: argparse.Namespace, default: Optional[Path]) -> Path:
    """Where a benchmark writes: ``--results-dir`` when given, else ``default`` (``benchmarks/results``)."""
    return Path(args.results_dir) if args.results_dir else Path(default or DEFAULT_RESULTS)


def check_replace(args: argparse.Namespace, folder: Path, stem: str, plots: Sequence[str] = ()) -> None:
    """Refuse, before any work, to replace results files (``stem.md``, ``stem.json`` and the ``plots`` file
    names) in the default folder without ``--force``; with it, name what will be replaced. A folder given with
    ``--results-dir`` is the user's to write to."""
    if args.results_dir:
        return
    existing = [folder / f for f in (f"{stem}.md", f"{stem}.json", *plots) if (folder / f).exists()]
    if not existing:
        return
    names = ", ".join(p.name for p in existing)
    if not getattr(args, "force", False):
        raise ResultsExistError(f"{folder} already holds {names}; pass --force to replace them (a deliberate full "
                                "run), or --results-dir / --name to write new files")
    print(f"--force: replacing {names} in {folder}", flush=True)


def write_results(results_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<results_dir>/<name>.json`` and ``.md``; the markdown gets an environment footer (the payload's
    ``environment``, or :func:`environment` merged under it)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    env = {**environment(), **payload.get("environment", {})}
    payload["environment"] = env
    js, md = results_dir / f"{name}.json", results_dir / f"{name}.md"
    js.write_text(json.dumps(payload, indent=2) + "\n")
    footer = "\n".join(f"- {k}: `{v}`" for k, v in env.items())
    md.write_text(markdown.rstrip() + "\n\n## Environment\n\n" + footer + "\n")
    return js, md


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or ``None`` without the ``plot`` extra (reports
    then skip their figures)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write (120 dpi, cropped to its content) and close a benchmark figure; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


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


def mean_std(s: dict, digits: int = 1, signed: bool = False, percent: bool = False) -> str:
    """``"mean ± std"`` of one aggregated metric (just the mean for a single seed, whose spread is unknown, not 0;
    ``-`` when undefined); ``signed``: a leading + on gains; ``percent``: fractions written as percentages."""
    if s["mean"] != s["mean"]:
        return "-"
    kind = "%" if percent else "f"
    mean = f"{s['mean']:{'+' if signed else ''}.{digits}{kind}}"
    return f"{mean} ± {s['std']:.{digits}{kind}}" if s.get("n", 1) > 1 else mean


def plot(agg: dict[str, dict], split: str, path: Path, title: str) -> Optional[Path]:
    """Bar plot of per-class IoU by method; ``None`` when matplotlib is missing."""
    try:
        from ..visualize import iou_bar_plot
    except ImportError:
        return None
    means = {label: {c: s["mean"] for c, s in a[split]["iou"].items()} for label, a in agg.items()}
    errs = {label: {c: s["std"] for c, s in a[split]["iou"].items()} for label, a in agg.items()}
    try:
        return iou_bar_plot(means, path, title, errs)
    except ImportError:
        return None


def cost_clock(runs: Sequence[Run]) -> str:
    """The record a cost column reads: ``train_cpu_seconds`` (each run's own CPU time, which other jobs sharing
    the machine hardly change) when every run has it, else ``train_seconds`` (wall time; runs from before CPU
    time was recorded, or resumed from their checkpoints)."""
    has_cpu = all(r.record().get("train_cpu_seconds") is not None for r in runs)
    return "train_cpu_seconds" if runs and has_cpu else "train_seconds"


def relative_cost(runs: Sequence[Run], iters: int, clock: Optional[str] = None) -> dict[str, dict[str, float]]:
    """Per label: mean training seconds per iteration (CPU or wall: ``clock``, by default :func:`cost_clock`'s;
    one clock for every run), and its ratio to source-only's in the same arm, the comparable number."""
    clock = clock or cost_clock(runs)
    per: dict[str, list[float]] = {}
    for r in runs:
        per.setdefault(r.label, []).append(r.record().get(clock, 0.0) / max(iters, 1))
    out = {}
    for label, values in per.items():
        mean = sum(values) / len(values)
        base_label = "source_only" + (" +aug" if label.endswith(" +aug") else "")
        base = per.get(base_label)
        ratio = mean / (sum(base) / len(base)) if base else float("nan")
        out[label] = {"seconds_per_iter": round(mean, 3), "relative_to_source_only": round(ratio, 2)}
    return out


def cost_plot(agg: dict[str, dict], costs: dict[str, dict[str, float]], split: str, path: Path,
              title: str) -> Optional[Path]:
    """Scatter of mean mIoU on ``split`` (error bar: std over seeds) against training cost relative to
    source-only, one point per method; ``None`` when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None
    labels = [k for k in agg if k in costs and split in agg[k]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    markers = "osD^v<>ph*"
    for i, label in enumerate(labels):  # a legend, not annotations: methods of equal cost would overprint
        x, m = costs[label]["relative_to_source_only"], agg[label][split]["miou"]
        ax.errorbar([x], [m["mean"]], yerr=[m["std"]], fmt=markers[i % len(markers)], capsize=3, label=label)
    for label, a in agg.items():  # methods without a cost (the warm starts) as reference lines
        if label not in costs and split in a:
            ax.axhline(a[split]["miou"]["mean"], color="grey", lw=0.8, ls=":")
            ax.annotate(label, (ax.get_xlim()[0], a[split]["miou"]["mean"]), fontsize=7, color="grey",
                        xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("training time per iteration / source-only's")
    ax.set_ylabel(f"{split} mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(plt, fig, path)


def longest_wall(results_json: Path, wall: float) -> float:
    """The longer of this invocation's wall time and the one recorded in an earlier ``results_json`` of the same
    benchmark: a restarted benchmark only adds missing runs, so the longest invocation is the full run's."""
    try:
        env = json.loads(Path(results_json).read_text()).get("environment", {})
        return max(wall, float(env.get("wall_seconds_longest_invocation", env.get("wall_seconds_this_invocation", 0))))
    except (OSError, ValueError):
        return wall


def paired_differences(runs: Sequence[Run], pairs: Sequence[tuple[str, str]], split: str,
                       metrics: Sequence[str] = ("miou", "miou_tail", "miou_head")) -> dict[str, dict[str, dict]]:
    """``{"a - b": {metric: {"mean", "std", "n", "per_seed"}}}`` on ``split`` for each pair of labels present:
    differences are taken seed by seed (the two runs of a seed share their warm start), so their spread is the
    spread of the effect itself, not of the warm starts."""
    by = {(r.label, r.seed): load_results(r)[split] for r in runs}
    out: dict[str, dict[str, dict]] = {}
    for a, b in pairs:
        seeds = sorted(s for (lab, s) in by if lab == a and (b, s) in by)
        if not seeds:
            continue
        out[f"{a} - {b}"] = {}
        for m in (m for m in metrics if m in by[(a, seeds[0])]):  # a recipe without class groups: mIoU only
            d = [by[(a, s)][m] - by[(b, s)][m] for s in seeds]
            out[f"{a} - {b}"][m] = {**_stats(d), "per_seed": [round(x, 2) for x in d]}
    return out


def differences_table(diffs: dict[str, dict[str, dict]], split: str) -> str:
    """Markdown: paired differences (mean ± std over seeds, the mean alone for one seed, and the per-seed values)
    of mIoU, tail and head."""
    lines = [f"| pair ({split}) | mIoU | tail mIoU | head mIoU | mIoU per seed |", "|---|---|---|---|---|"]
    for pair, d in diffs.items():
        cells = [mean_std(d[m], 1, signed=True) if m in d else "-" for m in ("miou", "miou_tail", "miou_head")]
        lines.append(f"| {pair} | " + " | ".join(cells) + " | " + ", ".join(f"{x:+.1f}" for x in d["miou"]["per_seed"])
                     + " |")
    return "\n".join(lines)
