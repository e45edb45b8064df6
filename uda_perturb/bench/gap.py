"""How much of a measured domain gap each method closes. A regime whose gap was measured before any adaptation
method ran on it (``camvid_rendered``: source-only on rendered 0016E5 against source-only on the real frames,
``setup_camvid_rendered.json``) reports, per method, its paired mIoU gain over source-only (same seed, same warm
start) as a share of that gap, seed by seed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .report import _stats, mean_std, paired_differences, pyplot, save_figure
from .runner import Run


def read_gap(record: Path) -> Optional[float]:
    """The gap in mIoU points of a gap record (``mean_miou``: ``real`` minus ``rendered``); None when the record
    is missing, so a report without it simply has no gap section."""
    try:
        data = json.loads(Path(record).read_text())  # setup_camvid_rendered_gap's report, or an older record
        means = data.get("mean_miou") or {k: data["results"][k]["real_test"]["miou"]["mean"] for k in ("real",
                                                                                                       "rendered")}
    except (OSError, ValueError, KeyError):
        return None
    return float(means["real"]) - float(means["rendered"])


def gap_closed(diffs: dict[str, dict[str, dict]], gap: float) -> dict[str, dict]:
    """``{pair: {"mean", "std", "n", "per_seed", "quarter_closed"}}``: each pair's per-seed mIoU difference (from
    :func:`~uda_perturb.bench.report.paired_differences`) divided by ``gap``. ``quarter_closed``: the goal that
    the mean gain is at least a quarter of the gap and more than twice its spread over seeds (never met by fewer
    than two seeds, which have no spread)."""
    if gap <= 0:
        raise ValueError(f"gap_closed: the gap must be positive, got {gap}")
    out = {}
    for pair, d in diffs.items():
        shares = [x / gap for x in d["miou"]["per_seed"]]
        st = _stats(shares)  # the gap is positive: the goal reads the same on shares as on points
        out[pair] = {**st, "per_seed": [round(x, 3) for x in shares],
                     "quarter_closed": bool(st["n"] > 1 and st["mean"] >= 0.25 and st["mean"] > 2 * st["std"])}
    return out


def closed_by_method(runs: Sequence[Run], methods: Sequence[str], suffixes: Sequence[str], split: str,
                     gap: float, baseline: str = "source_only") -> dict[str, dict]:
    """:func:`gap_closed` of every method (not only the report's pairs) against ``baseline`` of the same seed and
    augmentation arm (``suffixes``: the arms' label endings, e.g. ``" +aug"``), on ``split``."""
    pairs = [(m + x, baseline + x) for x in suffixes for m in methods if m != baseline]
    return gap_closed(paired_differences(runs, pairs, split), gap)


def gap_table(shares: dict[str, dict], gap: float) -> str:
    """Markdown: share of the gap closed (mean ± std, per seed) and whether the quarter goal is met (which one seed,
    having no spread, cannot decide)."""
    lines = [f"| pair | gain / gap ({gap:.1f} points) | per seed | >= 1/4 of the gap and > 2 std |",
             "|---|---|---|---|"]
    for pair, s in shares.items():
        goal = "met" if s["quarter_closed"] else "not met" if s["n"] > 1 else "needs 2+ seeds"
        lines.append(f"| {pair} | {mean_std(s, 0, signed=True, percent=True)} | "
                     + ", ".join(f"{x:+.0%}" for x in s["per_seed"]) + f" | {goal} |")
    return "\n".join(lines)


def gap_plot(shares: dict[str, dict], gap: float, path: Path, title: str) -> Optional[Path]:
    """Each pair's share of the gap closed: a bar at the mean (error bar: std over seeds), a dot per seed, and
    lines at 0 (source-only on the synthetic source), 1/4 (the goal) and 1 (source-only on real source images);
    ``None`` when matplotlib is missing or there is nothing to plot."""
    plt = pyplot()
    if plt is None or not shares:
        return None
    names = list(shares)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 4.0))
    for i, name in enumerate(names):
        s = shares[name]
        ax.bar(i, s["mean"], yerr=s["std"], capsize=4, color="tab:blue", alpha=0.6)
        ax.plot([i] * len(s["per_seed"]), s["per_seed"], "k.", ms=7)
    for level, text, style in ((0.0, "source-only (synthetic source)", "-"), (0.25, "goal: 1/4 of the gap", "--"),
                               (1.0, "source-only (real source)", ":")):
        ax.axhline(level, color="grey", lw=0.9, ls=style)
        ax.annotate(text, (-0.5, level), fontsize=7, color="grey", xytext=(2, 2), textcoords="offset points")
    ax.set_xticks(range(len(names)), [n.replace(" - ", "\n- ") for n in names], fontsize=7)
    ax.set_ylabel(f"paired gain / gap ({gap:.1f} mIoU points)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(plt, fig, path)
