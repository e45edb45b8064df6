"""Choose the CamVid setup on ImageNet-pretrained features (EfficientNet-Lite0), on the day test split only.

Every candidate is a source-only run of the ``camvid_day2dusk_pretrained`` recipe with overrides; its
evaluation holds only ``source_test`` (Seq05VD), so no dusk label is read while choosing. Writes
``results/setup_camvid_pretrained.{md,json}``. Runs one at a time with all cores; resumable (finished runs
are skipped)::

    python benchmarks/setup_camvid_pretrained.py [--only A,B] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from .report import add_results_options, check_replace, results_folder, write_results
from .runner import Run, launch

RECIPE = "camvid_day2dusk_pretrained"
DAY_ONLY = "data.eval={source_test: {name: camvid, root: ../shared/data/camvid, split: test, " \
           "transforms: {normalize: inception}}}"


def size(h: int, w: int) -> list[str]:
    return [f"data.source.transforms.size=[{h}, {w}]", f"data.target.transforms.size=[{h}, {w}]",
            f"eval.size=[{h}, {w}]"]


CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "A": ("Lite0 OS 8, 180x240, DeepLab-v2 ASPP dilations 1/3/6/9 (the first recipe)",
          size(180, 240) + ["model.head=aspp_v2", "model.head_options={dilations: [1, 3, 6, 9]}"]),
    "B": ("Lite0 OS 8, 120x160, DeepLab-v2 ASPP dilations 1/2/4/6",
          size(120, 160) + ["model.head=aspp_v2", "model.head_options={dilations: [1, 2, 4, 6]}"]),
    "C": ("Lite0 OS 8, 180x240, DeepLab-v2 ASPP dilations 6/12/18/24",
          size(180, 240) + ["model.head=aspp_v2", "model.head_options={dilations: [6, 12, 18, 24]}"]),
    "D": ("Lite0 OS 8, 240x320, DeepLab-v3 head rates 4/8/12",
          size(240, 320) + ["model.head_options={atrous_rates: [4, 8, 12]}"]),
    "E": ("Lite0 OS 8, 180x240, SGD lr 0.01 (heads 10x), momentum 0.9, wd 5e-4",
          size(180, 240) + ["train.optimizer=sgd", "train.lr=0.01", "train.weight_decay=5.0e-4"]),
    "F": ("Lite0 OS 8, 120x160, DeepLab-v3 head (256 ch, rates 2/4/6 + image pooling) (recipe)",
          size(120, 160) + ["model.head=deeplabv3", "model.head_options={atrous_rates: [2, 4, 6]}"]),
    "G": ("Lite0 OS 8, 180x240, DeepLab-v3 head (256 ch, rates 3/6/9 + image pooling) (recipe _hr)",
          size(180, 240) + ["model.head=deeplabv3", "model.head_options={atrous_rates: [3, 6, 9]}"]),
    "I": ("Lite0 OS 8, 120x160, DeepLab-v3 head, AdamW lr 6e-5 (head 6e-4) as DAFormer",
          size(120, 160) + ["model.head=deeplabv3", "model.head_options={atrous_rates: [2, 4, 6]}",
                            "train.lr=6.0e-5"]),
    "H": ("Lite0 OS 8, 120x160, DeepLab-v3 head, no class weights",
          size(120, 160) + ["model.head=deeplabv3", "model.head_options={atrous_rates: [2, 4, 6]}",
                            "train.class_weights=null"]),
}
TAIL = ["Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist"]


def make_run(key: str, args: argparse.Namespace) -> Run:
    """The source-only run of candidate ``key`` (evaluated on Seq05VD only)."""
    return Run(key, [DAY_ONLY, f"train.iters={args.iters}", f"train.eval_every={args.iters // 3}",
                     "train.checkpoint_every=0", *CANDIDATES[key][1]], args.out / key)


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(CANDIDATES), help="candidates to run (comma-separated)")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/setup_pretrained"))
    add_results_options(ap)
    args = ap.parse_args(argv)
    folder = results_folder(args, results_dir)
    check_replace(args, folder, "setup_camvid_pretrained")
    rows, payload = [], {"candidates": {}, "iters": args.iters}
    for key in args.only.split(","):
        launch(RECIPE, make_run(key, args), args.out / "logs", threads=args.threads)
    for key, (desc, overrides) in CANDIDATES.items():  # report every finished candidate, this call's or earlier
        run = make_run(key, args)
        if not run.done(RECIPE):
            continue
        res = json.loads((run.run_dir / "results.json").read_text())
        day = res["results"]["source_test"]
        curve = [json.loads(line)["eval"]["source_test"]["miou"] for line in (run.run_dir / "metrics.jsonl").open()
                 if '"eval"' in line]
        sec = res["train_seconds"] / args.iters
        payload["candidates"][key] = {"description": desc, "overrides": overrides, "seconds_per_iter": sec,
                                      "curve_miou": curve, "source_test": day}
        rows.append(f"| {key}: {desc} | {sec:.2f} | {' / '.join(f'{c:.1f}' for c in curve)} | {day['miou']:.1f} | "
                    f"{day['miou_tail']:.1f} | {day['miou_head']:.1f} | "
                    + " | ".join(f"{day['iou'][c]:.1f}" for c in TAIL) + " |")
    md = ["# Choosing the CamVid setup on pretrained features (source-only, day test split only)\n",
          f"Source-only runs of `{RECIPE}` with the overrides below; evaluation held only Seq05VD (no dusk labels "
          f"read). Seed 0, batch 8, {args.iters} iterations, {args.threads} threads, one run at a time.\n",
          "| candidate | s/iter | Seq05VD mIoU at 1/3, 2/3, end | mIoU | tail | head | "
          + " | ".join(TAIL) + " |", "|" + "---|" * (6 + len(TAIL)), *rows]
    js, mdp = write_results(folder, "setup_camvid_pretrained", payload, "\n".join(md))
    print(mdp.read_text())
    return 0
