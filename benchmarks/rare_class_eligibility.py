"""How many source images rare-class sampling may draw for each class, with DAFormer's 3000-pixel threshold counted
as is and scaled to each label's area (``min_pixels_scale``), on a real dataset's training labels.

    python benchmarks/rare_class_eligibility.py --recipe camvid_day2dusk --root ../shared/data/camvid
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uda_perturb.bench.report import add_results_options, check_replace, results_folder, write_results
from uda_perturb.class_balance import label_areas, per_image_class_pixels
from uda_perturb.config import load_config
from uda_perturb.data.rare_class_sampling import class_probabilities, image_thresholds
from uda_perturb.engine.loaders import build_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="camvid_day2dusk")
    ap.add_argument("--root", default="../shared/data/camvid")
    ap.add_argument("--min-pixels", type=int, default=3000)
    add_results_options(ap)
    args = ap.parse_args(argv)
    stem = f"rare_class_eligibility_{args.recipe}"
    out = results_folder(args, Path(__file__).resolve().parent / "results")
    check_replace(args, out, stem)
    cfg = load_config(args.recipe, [f"data.source.root={args.root}", f"data.target.root={args.root}"])
    ds = build_dataset(cfg.data.source, train=False)
    counts = per_image_class_pixels(ds, cfg.model.num_classes)
    areas = label_areas(ds)
    names = list(ds.info.classes)
    rows = {mode: [int((counts[:, c] > image_thresholds(areas, args.min_pixels, mode)).sum())
                   for c in range(counts.shape[1])] for mode in ("none", "label_area")}
    classes, p = class_probabilities(counts.sum(0))
    draw = dict(zip(classes.tolist(), p.tolist()))
    md = [f"# Images rare-class sampling may draw per class ({args.recipe}, {len(ds)} source images)", "",
          f"min_pixels {args.min_pixels} (DAFormer's, counted on GTA5's 1914x1052 labels); scaled: times each label's "
          f"area over that ({image_thresholds(areas[:1], args.min_pixels)[0]:.0f} pixels here). Draw probability: "
          "softmax((1 - f_c) / 0.01).", "", "| class | draw probability | eligible (as is) | eligible (scaled) |",
          "|---|---|---|---|"]
    md += [f"| {n} | {draw.get(c, 0.0):.3f} | {rows['none'][c]} | {rows['label_area'][c]} |"
           for c, n in enumerate(names)]
    write_results(out, stem, {"images": len(ds), "min_pixels": args.min_pixels, "classes": names,
                              "eligible": rows, "draw_probability": [draw.get(c, 0.0) for c in range(len(names))]},
                  "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
