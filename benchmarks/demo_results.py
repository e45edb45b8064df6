"""The README's main job (uda-perturb demo) with its tables written under results/.

Entry point of `uda_perturb.bench.demo_results` (see its docstring and `--help`); writes under benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.demo_results import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
