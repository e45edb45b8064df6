"""The README's main job (`uda-perturb demo`) with its tables written under results/ like every benchmark:

    python benchmarks/demo_results.py [--iters 300] [--seeds 0 1 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from ..demo import DEMO_SEEDS, DEMO_THREADS, report, run_demo, strip
from .report import add_results_options, check_replace, results_folder, write_results


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEMO_SEEDS))
    ap.add_argument("--threads", type=int, default=DEMO_THREADS)
    add_results_options(ap)
    args = ap.parse_args(argv)
    out = results_folder(args, results_dir)
    check_replace(args, out, "demo_synthetic")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        per_seed = run_demo(scratch, iters=args.iters, seeds=args.seeds, progress=False, threads=args.threads)
    wall = time.perf_counter() - start
    md = report(per_seed, args.iters, max(args.iters // 3, 1), args.threads).replace(
        "# Demo: synthetic day -> dusk, lite backbone", "# Demo: synthetic day -> dusk (`uda-perturb demo`)", 1)
    md += f"\n\nWall time of the whole demo: {wall:.0f} s."
    write_results(out, "demo_synthetic", {"seeds": args.seeds, "iters": args.iters, "threads": args.threads,
                                          "wall_seconds": wall, "results": strip(per_seed)}, md)
    return 0
