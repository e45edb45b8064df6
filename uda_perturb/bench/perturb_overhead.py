"""Cost of ``perturb_and_defend`` relative to one forward+backward of the whole segmentor.

Measured in one run, interleaved, so that the shared machine's noise hits both sides alike:
time ratio = median(perturb_and_defend incl. its backward) / median(segmentor forward+backward), and
peak-memory ratio of the same two on CUDA (on CPU: extra bytes allocated by the autograd graph, via
``torch.profiler``-free accounting of saved tensors is unreliable, so CPU reports time only plus RSS).

    python benchmarks/perturb_overhead.py --backbone resnet50 --size 128 256 --repeats 5
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

import uda_perturb as up

from .report import add_results_options, check_replace, results_folder, write_results


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="perturb_overhead")
    add_results_options(ap)
    args = ap.parse_args(argv)
    out = results_folder(args, results_dir)
    check_replace(args, out, args.out)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    seg = up.build_segmentor("deeplabv2", backbone=args.backbone, num_classes=args.classes).to(dev).train()
    disc = up.build_discriminator("fc", in_channels=args.classes).to(dev)
    x = torch.randn(args.batch, 3, *args.size, device=dev)
    y = torch.randint(0, args.classes, (args.batch, *args.size), device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def full_step() -> tuple[float, float]:
        seg.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t = time.perf_counter()
        up.losses.seg_ce(seg.classify(seg.features(x)), y).backward()
        sync()
        mem = torch.cuda.max_memory_allocated() if dev.type == "cuda" else 0
        return time.perf_counter() - t, mem

    with torch.no_grad():
        feats = seg.features(x)

    def perturb_step(steps: int) -> tuple[float, float]:
        seg.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        sync()
        t = time.perf_counter()
        out = up.perturb_and_defend(feats, seg.classifier, labels=y, discriminator=disc, steps=steps,
                                    attacks=["classifier", "discriminator"])
        out.loss.backward()
        sync()
        mem = torch.cuda.max_memory_allocated() - base if dev.type == "cuda" else 0
        return time.perf_counter() - t, mem

    def head_pass() -> tuple[float, float]:
        """The floor's first part: the defense's own classifier pass (forward + weight gradients) on f*."""
        seg.zero_grad(set_to_none=True)
        sync()
        t = time.perf_counter()
        up.losses.seg_ce(seg.classify(feats), y).backward()
        sync()
        return time.perf_counter() - t, 0

    def attack_gradient() -> tuple[float, float]:
        """The floor's second part: one input gradient of the attack objective (classifier + discriminator),
        channels-last as the Perturber runs it, no parameter gradients."""
        sync()
        t = time.perf_counter()
        f = feats.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        logits = seg.classify(f)
        d_in = up.losses.upsample(logits, tuple(y.shape[-2:])).softmax(1)
        loss = up.losses.seg_ce(logits, y) + up.losses.bce_to(disc(d_in), up.losses.SOURCE_LABEL)
        torch.autograd.grad(loss, f)
        sync()
        return time.perf_counter() - t, 0

    full_step(), [perturb_step(s) for s in args.steps], head_pass(), attack_gradient()  # warm-up
    times: dict[str, list[float]] = {"full": [], "head": [], "attack": []}
    mems: dict[str, list[float]] = {"full": []}
    for s in args.steps:
        times[f"steps={s}"], mems[f"steps={s}"] = [], []
    for _ in range(args.repeats):
        t, m = full_step()
        times["full"].append(t)
        mems["full"].append(m)
        for s in args.steps:
            t, m = perturb_step(s)
            times[f"steps={s}"].append(t)
            mems[f"steps={s}"].append(m)
        times["head"].append(head_pass()[0])
        times["attack"].append(attack_gradient()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    # what steps=1 cannot go below: the defense's head pass plus one attack input gradient
    floor = med["head"] + med["attack"]
    rows = []
    for s in args.steps:
        k = f"steps={s}"
        mem_ratio = (max(mems[k]) / max(mems["full"])) if dev.type == "cuda" else None
        rows.append({"steps": s, "time_s": med[k], "time_ratio": med[k] / med["full"], "peak_mem_ratio": mem_ratio,
                     "ratio_to_floor": med[k] / (med["head"] + s * med["attack"])})
    payload = {"backbone": args.backbone, "input": [args.batch, 3, *args.size], "classes": args.classes,
               "device": str(dev), "repeats": args.repeats, "seed": args.seed, "full_step_s": med["full"],
               "rows": rows, "peak_rss_mb": peak_rss_mb(), "target_time_ratio_steps1": 0.15,
               "floor": {"head_pass_s": med["head"], "attack_gradient_s": med["attack"], "floor_s": floor,
                         "floor_ratio_to_full": floor / med["full"]}}
    md = [f"# perturb_and_defend overhead ({args.backbone}, DeepLab-v2 head, input {args.batch}x3x{args.size[0]}x"
          f"{args.size[1]}, {dev})", "",
          f"Segmentor forward+backward (median of {args.repeats}): {med['full']:.3f} s. Floor measured in the same "
          f"run: the defense's own head pass (forward + weight gradients) {med['head']:.4f} s "
          f"({med['head'] / med['full']:.3f}x) plus one attack input gradient {med['attack']:.4f} s "
          f"({med['attack'] / med['full']:.3f}x) = {floor / med['full']:.3f}x a full step.", "",
          "| steps | perturb_and_defend + backward (s) | time ratio to full step | ratio to its floor (head pass + "
          "steps x attack gradient) | peak-memory ratio |",
          "|---|---|---|---|---|"]
    for r in rows:
        mem = f"{r['peak_mem_ratio']:.3f}" if r["peak_mem_ratio"] is not None else "n/a on CPU"
        md.append(f"| {r['steps']} | {r['time_s']:.4f} | {r['time_ratio']:.3f} | {r['ratio_to_floor']:.2f} | {mem} |")
    md += ["", "The perturbation runs on the features the step already computed: it costs classifier "
           "(and discriminator) passes, never a backbone pass. Target: time ratio at most 0.15 at steps=1."]
    js, mdp = write_results(out, args.out, payload, "\n".join(md))
    print("\n".join(md))
    print(f"wrote {js} and {mdp}")
    return 0
