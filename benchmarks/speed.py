"""Training-step time and peak memory per method, as ratios measured in one run.

Entry point of `uda_perturb.bench.speed` (see its docstring and `--help`); writes under benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.speed import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
