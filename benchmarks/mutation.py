"""Mutation testing of the core modules with mutmut 2, in scratch clones; score and surviving mutants.

Entry point of `benchmarks/mutation_testing/mutation.py` (see its docstring and `--help`); writes under
benchmarks/results/. Developer tooling: not part of the installed package.
"""
import sys
from pathlib import Path

from mutation_testing.mutation import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
