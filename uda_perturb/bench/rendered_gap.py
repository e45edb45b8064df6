"""The synthetic -> real gap of ``camvid_rendered2real``: source-only trained on 0016E5's label maps rendered
(``camvid_rendered``) against source-only trained on the real 0016E5 frames, same network and schedule, both
scored on the real Seq05VD frames (day test). Measured once to fix the renderer's design, before any adaptation
method runs on it. Writes ``setup_camvid_rendered.{md,json}`` and a picture of rendered and real frames.

    python benchmarks/rendered_gap.py --seeds 0 --jobs 2
    python benchmarks/rendered_gap.py --seeds 0 --name setup_camvid_rendered_v4 \
        --set model.backbone_options.output_stride=16

``--set`` overrides apply to both arms (a protocol's network and size; the real arm trains at the same size).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .report import add_results_options, check_replace, environment, pyplot, results_folder, write_results
from .runner import Run, run_all

RECIPE = "camvid_rendered2real"
CAMVID = "../shared/data/camvid"
COMMON = ["data.num_workers=0", "train.checkpoint_every=0", "train.eval_every=0"]
# the real-source control: the same frames' photos instead of their renderings
REAL_SOURCE = (f"data.source={{name: camvid, root: {CAMVID}, split: [train, val], "
               "options: {sequences: [0016E5], exclude_frames: [7869, 8249]}, "
               "transforms: {size: [120, 160], flip: true, normalize: inception}}")
TARGET = "real_test"


def runs(work: Path, seeds: Sequence[int], iters: Optional[int],
         overrides: Sequence[str] = ()) -> dict[str, list[Run]]:
    """The rendered-source and real-source source-only runs, one per seed; ``overrides`` apply to both (a
    ``data.source.transforms.size`` one reaches the real arm's source too)."""
    length = [f"train.iters={iters}"] if iters else []
    extra = [o for o in overrides if not o.startswith("data.source.")]
    source_extra = [o for o in overrides if o.startswith("data.source.")]
    return {"rendered": [Run("rendered 0016E5", COMMON + length + list(overrides), work / f"rendered_s{s}", s)
                         for s in seeds],
            "real": [Run("real 0016E5", COMMON + length + extra + [REAL_SOURCE] + source_extra, work / f"real_s{s}", s)
                     for s in seeds]}


def save_examples(path: Path, count: int = 3) -> Optional[Path]:
    """Rendered frames (both styles) beside their photos, the labels between them."""
    plt = pyplot()
    if plt is None:
        return None
    import uda_perturb as up
    from uda_perturb.data.io import read_rgb

    ds = up.DATASETS.build("camvid_rendered", root=CAMVID, split=["train", "val"], sequences=["0016E5"])
    n = len(ds.frames)
    picks = np.linspace(0, n - 1, count).astype(int)
    fig, axes = plt.subplots(count, 4, figsize=(12, 2.5 * count))
    palette = np.array(ds.info.palette + ((0, 0, 0),), np.uint8)
    for row, f in zip(axes, picks):
        lab = ds.read_label(int(f)).numpy()
        panels = [ds.render(int(f)), ds.render(int(f) + n), None, read_rgb(ds.frames.images[f])]
        for ax, img, title in zip(row, panels, ("rendered, style 0", "rendered, style 1", "label", "real photo")):
            ax.imshow(palette[np.where(lab == 255, len(palette) - 1, lab)] if img is None
                      else img.permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    """Train both sources (or reuse finished runs with the same settings) and write the gap."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--iters", type=int, help="training length (default: the recipe's)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work-dir", default="runs/bench/rendered_gap")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override of both arms (the protocol's network and size)")
    ap.add_argument("--name", default="setup_camvid_rendered", help="results file stem")
    add_results_options(ap)
    args = ap.parse_args(argv)
    name = args.name
    out = results_folder(args, results_dir)
    check_replace(args, out, name, [f"{name}_examples.png"])
    groups = runs(Path(args.work_dir), args.seeds, args.iters, args.overrides)
    wall = run_all(RECIPE, groups["rendered"] + groups["real"], args.jobs, Path(args.work_dir) / "logs")
    res = {k: [r.record()["results"][TARGET] for r in rs] for k, rs in groups.items()}
    seconds = {k: [r.record().get("train_seconds") for r in rs] for k, rs in groups.items()}
    classes = list(res["real"][0]["iou"])
    mean = {k: float(np.mean([x["miou"] for x in v])) for k, v in res.items()}
    ratio = mean["rendered"] / mean["real"]
    md = [f"# The rendered -> real gap of `{RECIPE}` (source-only, real Seq05VD)", "",
          "Source-only trained on 0016E5's label maps rendered (`camvid_rendered`, 2 styles per map) against "
          "source-only trained on the same frames' photos; the recipe's network and schedule; both scored on the "
          f"real Seq05VD frames, which no run trains on. Seeds {args.seeds}. Overrides of both arms: "
          f"{args.overrides or 'none'}.", "",
          f"**Rendered source reaches {mean['rendered']:.1f} mIoU, real source {mean['real']:.1f}: "
          f"{100 * ratio:.0f}% (gap {mean['real'] - mean['rendered']:.1f} points).**", "",
          "| source | seed | " + " | ".join(classes) + " | mIoU | tail | head | train s |",
          "|---|---|" + "---|" * (len(classes) + 4)]
    for k, rs in groups.items():
        for r, x, sec in zip(rs, res[k], seconds[k]):
            md.append(f"| {k} | {r.seed} | " + " | ".join(f"{x['iou'][c]:.1f}" for c in classes)
                      + f" | {x['miou']:.1f} | {x.get('miou_tail', float('nan')):.1f} | "
                      f"{x.get('miou_head', float('nan')):.1f} | {sec or float('nan'):.0f} |")
    out.mkdir(parents=True, exist_ok=True)
    pic = save_examples(out / f"{name}_examples.png")
    if pic is not None:
        md += ["", f"![rendered and real frames]({pic.name})"]
    write_results(out, name, {"environment": {**environment(), "wall_seconds": wall}, "seeds": args.seeds,
                              "overrides": args.overrides,
                              "results": res, "train_seconds": seconds, "mean_miou": mean, "ratio": ratio},
                  "\n".join(md))
    print("\n".join(md))
    return 0
