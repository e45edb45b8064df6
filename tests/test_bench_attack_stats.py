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


def test_means_over_iterations_then_over_seeds_and_silent_or_old_runs_left_out(tmp_path):
    a0 = run(tmp_path, "apoda", 0, [
        {"iteration": 10, "perturb/source_discriminator_rise": 2.0, "perturb/source_discriminator_clean": 0.1,
         "perturb/source_discriminator_share": 0.1, "perturb/source_norm": 5.0, "g/seg": 1.0},
        {"iteration": 20, "perturb/source_discriminator_rise": 4.0, "perturb/source_discriminator_clean": 0.3,
         "perturb/source_discriminator_share": 0.3},
        {"iteration": 20, "eval": {"real_test": {"miou": 20.0}}}])
    a1 = run(tmp_path, "apoda", 1, [{"iteration": 10, "perturb/source_discriminator_rise": 5.0,
                                     "perturb/source_discriminator_clean": 0.4,
                                     "perturb/source_discriminator_share": 0.5}])
    silent = run(tmp_path, "apoda + random", 0, [{"iteration": 10, "perturb/source_norm": 5.0}])
    # logged before the loss statistics: its cosine is equal for both objectives by construction, not read
    old = run(tmp_path, "apoda old", 0, [{"iteration": 10, "perturb/source_discriminator_cos": 0.7,
                                          "perturb/source_discriminator_gnorm": 0.9}])

    assert run_means(a0) == pytest.approx({"source_discriminator_rise": 3.0, "source_discriminator_clean": 0.2,
                                           "source_discriminator_share": 0.2})
    stats = objective_stats([a0, a1, silent, old])
    assert list(stats) == ["apoda"]
    rise = stats["apoda"]["source_discriminator_rise"]
    assert (rise["mean"], rise["std"], rise["n"]) == pytest.approx((4.0, 1.0, 2))  # seeds 3.0 and 5.0
    table = objective_table(stats)
    assert "| apoda | source discriminator | 0.300 ± 0.100 | 4.000 ± 1.000 | - | 0.35 ± 0.15 |" in table
