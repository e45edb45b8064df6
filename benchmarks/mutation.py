"""Mutation testing of the core modules with mutmut 2, in scratch clones; score and surviving mutants.

Entry point of `uda_perturb.bench.mutation` (see its docstring and `--help`); writes under benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.mutation import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
