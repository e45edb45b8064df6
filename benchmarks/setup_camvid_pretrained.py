"""Choose the pretrained CamVid setup on the day test split only.

Entry point of `uda_perturb.bench.setup_search` (see its docstring and `--help`); writes under benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.setup_search import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
