"""The README's main job: train source-only and APODA on the embedded synthetic day -> dusk scenes and
compare them per class on the target test split (a few minutes on 2 CPU cores)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .config import load_config
from .engine import Trainer

DEMO_METHODS = {
    "source_only": [],
    "apoda": ["method.options={ndf: 16, perturbation: {eps: 0.1, eps_mode: relative}}"],
}


def comparison_table(results: dict[str, dict], split: str) -> str:
    """Markdown: one row per method with per-class IoU, mIoU and class-group mIoUs on ``split``."""
    first = next(iter(results.values()))[split]
    classes = list(first["iou"])
    groups = [k for k in first if k.startswith("miou_")]
    head = "| method | " + " | ".join(classes) + " | mIoU | " + " | ".join(groups) + " |"
    lines = [head, "|" + "---|" * (len(classes) + 2 + len(groups))]
    for method, res in results.items():
        r = res[split]
        cells = [_f(r["iou"][c]) for c in classes] + [_f(r["miou"])] + [_f(r[g]) for g in groups]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f}"


def run_demo(out_dir: str | Path = "runs/demo", iters: int = 300, seed: int = 0, progress: bool = True,
             overwrite: bool = True) -> dict[str, dict]:
    """Train both methods, print and save the comparison; returns ``{method: {split: metrics}}``."""
    out = Path(out_dir)
    results = {}
    for method, extra in DEMO_METHODS.items():
        cfg = load_config("synthetic_demo", [f"method.name={method}", f"train.iters={iters}", f"seed={seed}", *extra])
        trainer = Trainer(cfg, out / method, overwrite=overwrite, progress=progress)
        results[method] = trainer.fit()
        trainer.close()
    text = ["# Demo: synthetic day -> dusk, lite backbone", "",
            f"{iters} iterations per method, seed {seed}. IoU in percent, final checkpoints.", "",
            "## Target (dusk) test", "", comparison_table(results, "target_test"), "",
            "## Source (day) test", "", comparison_table(results, "source_test")]
    (out / "comparison.md").write_text("\n".join(text) + "\n")
    (out / "comparison.json").write_text(json.dumps({m: {s: {k: v for k, v in r.items() if k != "table"}
                                                         for s, r in res.items()} for m, res in results.items()},
                                                    indent=2))
    print("\n".join(text))
    print(f"\nwritten to {out / 'comparison.md'}")
    return results
