"""Learning curves of source-only and DACS from one warm start; the adaptation length and lr chosen by the
label-free rule.

Entry point of `uda_perturb.bench.curve` (see its docstring and `--help`); writes under benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.curve import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
