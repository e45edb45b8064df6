"""Whether each attack objective steered a comparison's perturbations: the per-objective statistics the
perturbation add-on logs (``perturb/{side}_{objective}_cos`` and ``_gnorm`` in ``metrics.jsonl``, see
:class:`~uda_perturb.attack_combination.ObjectiveStats`), averaged over a run's logged iterations, then mean ± std
over seeds. Methods that log none (one objective, or ``combine: sum``) are left out."""
from __future__ import annotations

import json
from typing import Sequence

from .report import _stats, mean_std
from .runner import Run

PREFIX = "perturb/"
SUFFIXES = ("_cos", "_gnorm")


def run_means(run: Run) -> dict[str, float]:
    """``{side_objective_cos|gnorm: mean over the logged iterations}`` of one finished run."""
    sums: dict[str, list[float]] = {}
    for line in (run.run_dir / "metrics.jsonl").read_text().splitlines():
        for key, value in json.loads(line).items():
            if key.startswith(PREFIX) and key.endswith(SUFFIXES):
                sums.setdefault(key[len(PREFIX):], []).append(float(value))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def objective_stats(runs: Sequence[Run]) -> dict[str, dict[str, dict[str, float]]]:
    """``{label: {statistic: {mean, std, n}}}`` over the seeds of each label that logged any."""
    by_label: dict[str, list[dict[str, float]]] = {}
    for r in runs:
        means = run_means(r)
        if means:
            by_label.setdefault(r.label, []).append(means)
    return {label: {k: _stats([m.get(k) for m in seeds]) for k in sorted(seeds[0])}
            for label, seeds in by_label.items()}


def objective_table(stats: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: a row per method and statistic (mean over training, then mean ± std over seeds)."""
    lines = ["| method | domain and objective | cosine(step, its direction) | its gradient norm / the largest |",
             "|---|---|---|---|"]
    for label, s in stats.items():
        for name in sorted({k.rsplit("_", 1)[0] for k in s}):
            cos, gnorm = s.get(f"{name}_cos"), s.get(f"{name}_gnorm")
            lines.append(f"| {label} | {name.replace('_', ' ')} | {mean_std(cos, 2) if cos else '-'} | "
                         f"{mean_std(gnorm, 2) if gnorm else '-'} |")
    return "\n".join(lines)
