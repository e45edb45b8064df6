"""Comparisons and ablations: a packaged study (``--dataset NAME``, default ``camvid``; ``uda-perturb list
studies``) run by the study runner, run folders under ``runs/bench``, the report under ``benchmarks/results/``
(replaced only with ``--force``). Every other option is ``uda-perturb study run``'s:

    python benchmarks/compare.py --dataset camvid_rendered_v4 --jobs 2
    python benchmarks/compare.py --dataset apoda_attacks_v4 --dry-run
"""
import sys
from pathlib import Path

from uda_perturb.study import main

if __name__ == "__main__":
    args = sys.argv[1:]
    name = "camvid"
    if "--dataset" in args:
        i = args.index("--dataset")
        name = args.pop(i + 1)
        args.pop(i)
    if "--work-dir" not in args:
        args += ["--work-dir", "runs/bench"]
    sys.exit(main(["run", name, *args], prog="compare", results_default=Path(__file__).resolve().parent / "results"))
