"""Do the first attack step's two directions agree on heads with BatchNorm and dropout?

``first_step="caller"`` takes the first step's gradients from the caller's train-mode graph (batch statistics,
dropout masks); ``"own"`` from the attack's own forward (running statistics, no dropout). On a head without
BatchNorm or dropout the two are the same by construction and ``auto`` takes the caller's; on others ``auto``
keeps ``own`` unless the two agree (mean per-position cosine >= 0.99). This measures that cosine on the comparison
model (EfficientNet-Lite0 ImageNet weights, DeepLab-v3 head, 120x160) and on torchvision's DeepLabV3-MobileNetV3,
on real CamVid frames, after 20 train-mode passes that give the heads' running statistics real values, for both
domains (source: classifier + discriminator attack, target: the same without labels).

    python benchmarks/first_step_agreement.py --camvid ../shared/data/camvid
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

import uda_perturb as up
from uda_perturb.bench.report import add_results_options, check_replace, results_folder, write_results
from uda_perturb.config import load_config
from uda_perturb.engine.loaders import build_dataset

STEM = "first_step_agreement"
GOAL = 0.99


def camvid_batches(root: str, n: int, batch: int) -> list[dict]:
    cfg = load_config("camvid_day2dusk_pretrained", [f"data.source.root={root}", f"data.target.root={root}"])
    ds = build_dataset(cfg.data.source, train=False)
    items = [ds[i] for i in range(0, n * batch)]
    return [{"image": torch.stack([it["image"] for it in items[i:i + batch]]),
             "label": torch.stack([it["label"] for it in items[i:i + batch]])} for i in range(0, len(items), batch)]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over positions of the cosine over channels (positions where both moved)."""
    na, nb = a.norm(dim=1), b.norm(dim=1)
    both = (na > 0) & (nb > 0)
    return float(((a * b).sum(1)[both] / (na * nb)[both]).mean())


def agreement(name: str, features, classifier, batches: list[dict], classes: int) -> dict:
    torch.manual_seed(0)
    D = up.build_discriminator("fc", in_channels=classes, ndf=32)
    out = {}
    for domain in ("source", "target"):
        values = []
        for b in batches[-3:]:
            f = features(b["image"])
            z = classifier(f)
            kw = {"labels": b["label"]} if domain == "source" else {"domain": "target",
                                                                   "output_size": tuple(b["image"].shape[-2:])}
            steps = {}
            for mode in ("caller", "own"):
                perturber = up.Perturber(eps=0.1, first_step=mode, objective_stats=False)
                fstar, _, _ = perturber.perturb(f, classifier, discriminator=D, clean_logits=z, **kw)
                steps[mode] = fstar - f.detach()
            values.append(cosine(steps["caller"], steps["own"]))
        out[domain] = sum(values) / len(values)
    return {"model": name, **out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--camvid", default="../shared/data/camvid")
    add_results_options(ap)
    args = ap.parse_args(argv)
    out_dir = results_folder(args, Path(__file__).resolve().parent / "results")
    check_replace(args, out_dir, STEM)
    batches = camvid_batches(args.camvid, 23, 4)
    rows = []
    # the comparison model, as camvid_day2dusk_pretrained builds it (ImageNet backbone weights, fresh head)
    torch.manual_seed(0)
    seg = up.build_segmentor("deeplabv3", backbone="efficientnet_lite0", num_classes=11,
                             backbone_kwargs={"output_stride": 8, "pretrained": True},
                             head_kwargs={"atrous_rates": (2, 4, 6)}).train()
    tv = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=11).train()
    view = up.split_torchvision(tv)
    with torch.no_grad():  # running statistics from real frames, as a few training steps would give them
        for b in batches[:20]:
            seg.classify(seg.features(b["image"]))
            view.classify(view.features(b["image"]))
    rows.append(agreement("comparison model (Lite0 + DeepLab-v3 head)", seg.features, seg.classifier, batches, 11))
    rows.append(agreement("torchvision DeepLabV3-MobileNetV3", view.features, view.classify, batches, 11))
    md = ["# The first attack step from the caller's graph against the attack's own forward, on heads with "
          "BatchNorm and dropout", "",
          "Mean per-position cosine between the two first-step directions (`first_step='caller'`: the train-mode "
          "graph of the caller's forward; `'own'`: the attack's forward with running statistics and no dropout), "
          "balanced classifier + discriminator attack, eps 0.1 relative, 3 batches of 4 real CamVid day frames at "
          "120x160 after 20 train-mode passes.", "",
          "| model | source | target | agree (>= 0.99)? |", "|---|---|---|---|"]
    for r in rows:
        agree = "yes" if min(r["source"], r["target"]) >= GOAL else "no: `auto` keeps the attack's own forward"
        md.append(f"| {r['model']} | {r['source']:.3f} | {r['target']:.3f} | {agree} |")
    write_results(out_dir, STEM, {"rows": rows, "goal": GOAL}, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
