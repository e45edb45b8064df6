"""Choose a cheaper protocol for the rendered -> real regime (``camvid_rendered2real``) without target labels.

Every candidate is a source-only warm start of the recipe with overrides (seed 0, batch 8), evaluated only on
``source_test``: 0016E5's held-out clip rendered with another seed, which no run trains on. No real label is
read. The rule, fixed before the runs: among the candidates whose training CPU seconds per iteration are at most
a third of the current protocol's (``os8``), the best source_test mIoU at the end; the curve at a third and two
thirds of the run shows whether a shorter warm start would do. Writes ``setup_camvid_rendered_protocol.{md,json}``.

    python benchmarks/protocol_rendered.py --jobs 2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from .report import add_results_options, check_replace, environment, results_folder, write_results
from .runner import Run, run_all

RECIPE = "camvid_rendered2real"
SOURCE_ONLY_EVAL = ("data.eval={source_test: {name: camvid_rendered, root: ../shared/data/camvid, split: val, "
                    "options: {sequences: [\"0016E5\"], styles: 1, seed: 1}, transforms: {normalize: inception}}}")
NAME = "setup_camvid_rendered_protocol"


def size(h: int, w: int) -> list[str]:
    """Train and evaluate at ``h x w``."""
    return [f"data.source.transforms.size=[{h}, {w}]", f"data.target.transforms.size=[{h}, {w}]",
            f"eval.size=[{h}, {w}]"]


def os16(rates: Sequence[int]) -> list[str]:
    """Output stride 16, the head's atrous rates scaled to the smaller feature map."""
    return ["model.backbone_options.output_stride=16",
            f"model.head_options={{atrous_rates: [{', '.join(str(r) for r in rates)}]}}"]


# the rates follow the feature map: 2/4/6 on OS 8's 15 x 20 at 120 x 160; 1/2/3 on OS 16's 8 x 10; 2/3/5 on OS 16's
# 12 x 15 at 180 x 240
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "os8": ("OS 8, 120x160, rates 2/4/6 (the current protocol)", []),
    "os16": ("OS 16, 120x160, rates 1/2/3", os16([1, 2, 3])),
    "os16_180": ("OS 16, 180x240, rates 2/3/5", size(180, 240) + os16([2, 3, 5])),
    "os16_150": ("OS 16, 150x200, rates 1/3/4", size(150, 200) + os16([1, 3, 4])),
}
REFERENCE = "os8"


def make_run(key: str, work: Path, iters: int) -> Run:
    """Candidate ``key``'s source-only warm start, evaluated on source_test only, three times along the way."""
    return Run(key, ["data.num_workers=0", SOURCE_ONLY_EVAL, f"train.iters={iters}", "data.batch_size=8",
                     f"train.eval_every={iters // 3}", "train.checkpoint_every=100", *CANDIDATES[key][1]],
               work / key)


def choose(rows: dict[str, dict[str, Any]]) -> Optional[str]:
    """The rule: the best final source_test mIoU among candidates at most a third of the reference's cost."""
    if REFERENCE not in rows:
        return None
    budget = rows[REFERENCE]["cpu_seconds_per_iter"] / 3
    cheap = {k: r for k, r in rows.items() if r["cpu_seconds_per_iter"] <= budget}
    return max(cheap, key=lambda k: cheap[k]["source_test_miou"]) if cheap else None


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    """Train the candidates (reusing finished runs with the same settings), then the table and the choice."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work-dir", default="runs/bench/protocol_rendered")
    add_results_options(ap)
    args = ap.parse_args(argv)
    out = results_folder(args, results_dir)
    check_replace(args, out, NAME)
    work = Path(args.work_dir)
    runs = [make_run(k, work, args.iters) for k in args.only]
    wall = run_all(RECIPE, runs, args.jobs, work / "logs")
    rows: dict[str, dict[str, Any]] = {}
    for key in CANDIDATES:
        run = make_run(key, work, args.iters)
        if not run.done(RECIPE):
            continue
        record = run.record()
        curve = [json.loads(line)["eval"]["source_test"]["miou"] for line in (run.run_dir / "metrics.jsonl").open()
                 if '"eval"' in line]
        final = record["results"]["source_test"]
        rows[key] = {"description": CANDIDATES[key][0], "overrides": CANDIDATES[key][1],
                     "cpu_seconds_per_iter": record["train_cpu_seconds"] / args.iters, "curve_miou": curve,
                     "source_test_miou": final["miou"], "tail": final.get("miou_tail"), "head": final.get("miou_head")}
    pick = choose(rows)
    ref = rows.get(REFERENCE, {}).get("cpu_seconds_per_iter")
    md = [f"# A cheaper protocol for `{RECIPE}`, chosen on the rendered source_test only", "",
          f"Source-only warm starts (seed 0, batch 8, {args.iters} iterations, 1 thread each, {args.jobs} at a "
          "time), evaluated on source_test only: 0016E5's held-out clip rendered with another seed. No real label "
          "was read. Rule, fixed before the runs: among candidates at most 1/3 of the current protocol's CPU "
          "seconds per iteration, the best final source_test mIoU.", "",
          "| candidate | CPU s/iter | / current | source_test mIoU at 1/3, 2/3, end | tail | head |",
          "|---|---|---|---|---|---|"]
    for key, r in rows.items():
        rel = f"{r['cpu_seconds_per_iter'] / ref:.2f}" if ref else "-"
        md.append(f"| {key}: {r['description']} | {r['cpu_seconds_per_iter']:.2f} | {rel} | "
                  f"{' / '.join(f'{c:.1f}' for c in r['curve_miou'])} | {r['tail']:.1f} | {r['head']:.1f} |")
    md += ["", f"**Chosen: {pick}**" + (f" ({rows[pick]['description']})." if pick else " (rule not applicable: "
                                                                                     "the reference run is missing).")]
    write_results(out, NAME, {"environment": {**environment(), "wall_seconds": wall}, "iters": args.iters,
                              "candidates": rows, "chosen": pick, "rule": "best source_test mIoU at <= 1/3 the cost"},
                  "\n".join(md))
    print("\n".join(md))
    return 0
