"""The defense's cost inside AdaptSegNet's own multi-level step, both levels and both domains.

Entry point of `uda_perturb.bench.own_loop` (see its docstring and `--help`); writes under benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.own_loop import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
