"""Method comparison (CamVid day -> dusk, pretrained CamVid, synthetic).

Entry point of `uda_perturb.bench.compare` (see its docstring and `--help`); writes under benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.compare import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
