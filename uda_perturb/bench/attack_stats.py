"""What each attack objective did in a comparison's perturbations: the per-objective statistics the perturbation
add-on logs (``perturb/{side}_{objective}_clean``, ``_rise``, ``_cos``, ``_share`` and ``{side}_directions_cos`` in
``metrics.jsonl``, see :class:`~uda_perturb.objective_stats.ObjectiveStats`), averaged over a run's logged
iterations, then mean ± std over seeds. Methods that log none (controls) are left out. Runs made before these
statistics existed logged ``_cos`` and ``_gnorm`` only; under ``balanced`` with equal weights their ``_cos`` is
equal for both objectives by construction and says nothing about whether D acted, so it is not read."""
from __future__ import annotations

import json
from typing import Sequence

from .report import _stats, mean_std
from .runner import Run

PREFIX = "perturb/"
STATISTICS = ("clean", "rise", "cos", "share")
SUFFIXES = tuple(f"_{s}" for s in STATISTICS)


def run_means(run: Run) -> dict[str, float]:
    """``{side_objective_statistic: mean over the logged iterations}`` of one finished run (nothing for a run
    logged before the loss statistics existed: see the module docstring, or without a metrics log)."""
    sums: dict[str, list[float]] = {}
    log = run.run_dir / "metrics.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        for key, value in json.loads(line).items():
            if key.startswith(PREFIX) and key.endswith(SUFFIXES):
                sums.setdefault(key[len(PREFIX):], []).append(float(value))
    if not any(k.endswith("_rise") for k in sums):
        return {}
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
    """Markdown: a row per method, domain and objective (mean over training, then mean ± std over seeds): its
    loss at clean features, its rise at f* (the attack's effect), the step's cosine with its direction and its
    gradient-norm share ('-': not measured, e.g. the cosines under ``sum``)."""
    lines = ["| method | domain and objective | loss at clean | rise at f* | cosine(step, its direction) | "
             "gradient-norm share |", "|---|---|---|---|---|---|"]
    for label, s in stats.items():
        for name in sorted({k.rsplit("_", 1)[0] for k in s if not k.endswith("directions_cos")}):
            cells = [s.get(f"{name}_{stat}") for stat in STATISTICS]
            lines.append(f"| {label} | {name.replace('_', ' ')} | "
                         + " | ".join(mean_std(c, 3 if i < 2 else 2) if c else "-" for i, c in enumerate(cells)) + " |")
    return "\n".join(lines)
