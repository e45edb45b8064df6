"""Choose a cheaper protocol for the rendered -> real regime on the rendered source_test only.

Entry point of `uda_perturb.bench.protocol_rendered` (see its docstring and `--help`); writes under
benchmarks/results/.
"""
import sys
from pathlib import Path

from uda_perturb.bench.protocol_rendered import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
