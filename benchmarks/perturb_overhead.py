"""Cost of perturb_and_defend relative to a full segmentor step, and its floor.

Entry point of `uda_perturb.bench.perturb_overhead` (see its docstring and `--help`); writes under benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.perturb_overhead import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
