"""Fault injection: SIGKILL training at random points (also inside a checkpoint save, also under torchrun),
resume, and compare with an uninterrupted run.

Entry point of `uda_perturb.bench.fault_injection` (see its docstring and `--help`); writes under
benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.fault_injection import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
