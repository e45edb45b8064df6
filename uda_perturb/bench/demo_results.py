"""The README's main job (`uda-perturb demo`) with its tables written under results/ like every benchmark:

    python benchmarks/demo_results.py [--iters 300] [--seed 0]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from ..demo import comparison_table, reading, run_demo
from .report import add_results_options, check_replace, results_folder, write_results


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    add_results_options(ap)
    args = ap.parse_args(argv)
    out = results_folder(args, results_dir)
    check_replace(args, out, "demo_synthetic")
    with tempfile.TemporaryDirectory() as scratch:
        results = run_demo(scratch, iters=args.iters, seed=args.seed, progress=False)
    md = ["# Demo: synthetic day -> dusk (`uda-perturb demo`)", "",
          f"Source-only warm start ({args.iters} iterations), then {max(args.iters // 3, 1)} more iterations of each "
          f"method from it; seed {args.seed}.", "", reading(results), "", "## Target (dusk) test", "",
          comparison_table(results, "target_test"), "", "## Source (day) test", "",
          comparison_table(results, "source_test")]
    strip = {m: {s: {k: v for k, v in r.items() if k != "table"} for s, r in res.items()} for m, res in results.items()}
    write_results(out, "demo_synthetic", {"seed": args.seed, "iters": args.iters, "results": strip},
                  "\n".join(md))
    return 0
