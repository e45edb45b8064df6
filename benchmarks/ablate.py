"""Ablations: APODA variants, or the perturbation add-on's radius on DACS.

Entry point of `uda_perturb.bench.ablate` (see its docstring and `--help`); writes under benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.ablate import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
