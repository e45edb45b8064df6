"""The comparison's table of per-objective attack statistics, read from each run's metrics log."""
import json

import pytest

from uda_perturb.bench.attack_stats import objective_stats, objective_table, run_means
from uda_perturb.bench.runner import Run


def run(tmp_path, label, seed, records):
    d = tmp_path / f"{label}_{seed}"
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return Run(label, [], d, seed)


def test_means_over_iterations_then_over_seeds_and_silent_runs_left_out(tmp_path):
    a0 = run(tmp_path, "apoda", 0, [
        {"iteration": 10, "perturb/source_discriminator_cos": 0.2, "perturb/source_discriminator_gnorm": 0.1,
         "perturb/source_norm": 5.0, "g/seg": 1.0},
        {"iteration": 20, "perturb/source_discriminator_cos": 0.6, "perturb/source_discriminator_gnorm": 0.3},
        {"iteration": 20, "eval": {"real_test": {"miou": 20.0}}}])
    a1 = run(tmp_path, "apoda", 1, [{"iteration": 10, "perturb/source_discriminator_cos": 0.8,
                                     "perturb/source_discriminator_gnorm": 0.5}])
    silent = run(tmp_path, "apoda sum", 0, [{"iteration": 10, "perturb/source_norm": 5.0}])

    assert run_means(a0) == pytest.approx({"source_discriminator_cos": 0.4, "source_discriminator_gnorm": 0.2})
    stats = objective_stats([a0, a1, silent])
    assert list(stats) == ["apoda"]
    cos = stats["apoda"]["source_discriminator_cos"]
    assert (cos["mean"], cos["std"], cos["n"]) == pytest.approx((0.6, 0.2, 2))  # seeds 0.4 and 0.8
    table = objective_table(stats)
    assert "| apoda | source discriminator | 0.60 ± 0.20 | 0.35 ± 0.15 |" in table
