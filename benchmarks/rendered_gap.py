"""The rendered -> real source-only gap of the camvid_rendered2real recipe.

Entry point of `uda_perturb.bench.rendered_gap` (see its docstring and `--help`); writes under benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.rendered_gap import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
