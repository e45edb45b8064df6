"""Method comparison on CamVid day -> dusk (or ``--dataset synthetic``); see uda_perturb/bench_compare.py.

    python benchmarks/compare.py                      # full: 5 methods x 2 aug arms x 3 seeds (~2 h, 2 cores)
    python benchmarks/compare.py --quick              # smoke test, minutes
    python benchmarks/compare.py --dataset synthetic
"""
import sys

from uda_perturb.bench_compare import main

if __name__ == "__main__":
    sys.exit(main())
