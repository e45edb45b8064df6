"""Cost of ``perturb_and_defend`` relative to one forward+backward of the whole segmentor.

Measured in one run, interleaved, so that the shared machine's noise hits both sides alike:
time ratio = median(perturb_and_defend incl. its backward) / median(segmentor forward+backward), and
peak-memory ratio of the same two on CUDA (on CPU: extra bytes allocated by the autograd graph, via
``torch.profiler``-free accounting of saved tensors is unreliable, so CPU reports time only plus RSS).
Each attack-combination rule (``--combine``) gets its rows and its floor: the defense's head pass plus, per
attack step, one classifier forward and the input gradients the rule needs (``sum``: one backward of the
summed loss; ``balanced``: one backward per objective). The floor's per-objective gradients are also timed as
one vmapped backward (``is_grads_batched``), to show which way is cheaper on this device.

    python benchmarks/perturb_overhead.py --backbone resnet50 --size 128 256 --repeats 5
    python benchmarks/perturb_overhead.py --model camvid_pretrained --size 120 160 --batch 4 --threads 1
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

from ..attack_combination import COMBINE_MODES, objective_gradients
from ..model_state import mode_sensitive
from .report import add_results_options, check_replace, results_folder, write_results
from .speed import MODELS


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet50", help="DeepLab-v2 on this backbone (unless --model)")
    ap.add_argument("--model", choices=sorted(MODELS), help="a model of speed.py instead (its classes too)")
    ap.add_argument("--combine", nargs="+", default=["balanced", "sum"], choices=list(COMBINE_MODES[:2]))
    ap.add_argument("--threads", type=int, help="torch threads")
    ap.add_argument("--ndf", type=int, default=64, help="discriminator width")
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
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    if args.model:
        spec = MODELS[args.model]
        args.classes = spec["num_classes"]
        seg = up.build_segmentor(**spec).to(dev).train()
    else:
        seg = up.build_segmentor("deeplabv2", backbone=args.backbone, num_classes=args.classes).to(dev).train()
    disc = up.build_discriminator("fc", in_channels=args.classes, ndf=args.ndf).to(dev)
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

    def perturb_step(steps: int, combine: str, first_step: str) -> tuple[float, float]:
        seg.zero_grad(set_to_none=True)
        f = feats.detach().requires_grad_(True)
        clean = seg.classify(f)  # the caller's own forward, not timed: the step has made it already
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        sync()
        t = time.perf_counter()
        out = up.perturb_and_defend(f, seg.classifier, labels=y, discriminator=disc, steps=steps,
                                    attacks=["classifier", "discriminator"], combine=combine, clean_logits=clean,
                                    first_step=first_step, objective_stats=False)  # the attack alone: its floor
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

    def attack_gradient(how: str, forward: bool = True) -> tuple[float, float]:
        """The floor's second part: one attack step's classifier forward and input gradients (channels-last, as
        the Perturber runs it by default; no parameter gradients): of the summed objectives (``sum``), of each
        objective one after the other (``balanced``), or of both in one vmapped backward (``batched``). Without
        ``forward`` the gradients come from a graph made before the clock starts (the first step from the
        caller's forward) and the graph is kept."""
        f = feats.detach().requires_grad_(True)
        logits = None if forward else seg.classify(f)
        sync()
        t = time.perf_counter()
        if forward:
            f = feats.contiguous(memory_format=torch.channels_last).requires_grad_(True)
            logits = seg.classify(f)
        assert logits is not None
        d_in = up.losses.upsample(logits, tuple(y.shape[-2:])).softmax(1)
        losses = [up.losses.seg_ce(logits, y), up.losses.bce_to(disc(d_in), up.losses.SOURCE_LABEL)]
        keep = not forward
        if how == "sum":
            torch.autograd.grad(losses[0] + losses[1], f, retain_graph=keep)
        elif how == "balanced":
            objective_gradients(losses, f, 1.0, keep_graph=keep)
        else:
            torch.autograd.grad(torch.stack(losses), f, grad_outputs=torch.eye(2, device=dev), is_grads_batched=True,
                                retain_graph=keep)
        sync()
        return time.perf_counter() - t, 0

    kinds = ("sum", "balanced", "batched")
    keys = [(s, c, fs, f"steps={s} {c} first_step={fs}") for c in args.combine for s in args.steps
            for fs in ("auto", "own")]
    full_step(), [perturb_step(s, c, fs) for s, c, fs, _ in keys], head_pass()  # warm-up
    [(attack_gradient(k), attack_gradient(k, forward=False)) for k in kinds]
    times: dict[str, list[float]] = {"full": [], "head": [], **{f"attack_{k}": [] for k in kinds},
                                     **{f"reuse_{k}": [] for k in kinds}}
    mems: dict[str, list[float]] = {"full": []}
    for *_, k in keys:
        times[k], mems[k] = [], []
    for _ in range(args.repeats):
        t, m = full_step()
        times["full"].append(t)
        mems["full"].append(m)
        for s, c, fs, k in keys:
            t, m = perturb_step(s, c, fs)
            times[k].append(t)
            mems[k].append(m)
        times["head"].append(head_pass()[0])
        for kind in kinds:
            times[f"attack_{kind}"].append(attack_gradient(kind)[0])
            times[f"reuse_{kind}"].append(attack_gradient(kind, forward=False)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    # what steps=s cannot go below: the defense's head pass plus s attack steps' forward and input gradients; with
    # the first step from the caller's graph, that step's gradients without a forward
    rows = []
    reused = seg.classifier is not None and not mode_sensitive([seg.classifier])
    for s, c, fs, k in keys:
        first = med[f"reuse_{c}"] if fs == "auto" and reused else med[f"attack_{c}"]
        floor = med["head"] + first + (s - 1) * med[f"attack_{c}"]
        mem_ratio = (max(mems[k]) / max(mems["full"])) if dev.type == "cuda" else None
        rows.append({"steps": s, "combine": c, "first_step": fs, "time_s": med[k], "time_ratio": med[k] / med["full"],
                     "peak_mem_ratio": mem_ratio, "floor_s": floor, "ratio_to_floor": med[k] / floor})
    name = args.model or f"{args.backbone}, DeepLab-v2 head"
    payload = {"model": args.model, "backbone": None if args.model else args.backbone,
               "input": [args.batch, 3, *args.size], "classes": args.classes, "ndf": args.ndf,
               "device": str(dev), "repeats": args.repeats, "seed": args.seed, "full_step_s": med["full"],
               "threads": torch.get_num_threads(), "rows": rows, "peak_rss_mb": peak_rss_mb(),
               "target_time_ratio_steps1": 0.15,
               "first_step_reused": reused,
               "floor": {"head_pass_s": med["head"], **{f"attack_step_{k}_s": med[f"attack_{k}"] for k in kinds},
                         **{f"first_step_from_caller_{k}_s": med[f"reuse_{k}"] for k in kinds}}}
    md = [f"# perturb_and_defend overhead ({name}, input {args.batch}x3x{args.size[0]}x{args.size[1]}, {dev}, "
          f"classifier + discriminator attack)", "",
          f"Segmentor forward+backward (median of {args.repeats}): {med['full']:.3f} s. Floor parts measured in the "
          f"same run: the defense's own head pass (forward + weight gradients) {med['head']:.4f} s "
          f"({med['head'] / med['full']:.3f}x); one attack step's classifier forward and input gradients: "
          f"summed objectives {med['attack_sum']:.4f} s ({med['attack_sum'] / med['full']:.3f}x), each objective "
          f"in turn {med['attack_balanced']:.4f} s ({med['attack_balanced'] / med['full']:.3f}x), both in one "
          f"vmapped backward {med['attack_batched']:.4f} s ({med['attack_batched'] / med['full']:.3f}x; the "
          f"Perturber computes them in turn). The first step's input gradients from the caller's graph (no "
          f"forward): summed {med['reuse_sum']:.4f} s, in turn {med['reuse_balanced']:.4f} s, vmapped "
          f"{med['reuse_batched']:.4f} s; taken automatically here: "
          f"{'yes' if reused else 'no (BatchNorm or dropout)'}.",
          "",
          "| combine | steps | first_step | perturb_and_defend + backward (s) | time ratio to full step | ratio to its "
          "floor (head pass + the steps' input gradients) | peak-memory ratio |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = f"{r['peak_mem_ratio']:.3f}" if r["peak_mem_ratio"] is not None else "n/a on CPU"
        md.append(f"| {r['combine']} | {r['steps']} | {r['first_step']} | {r['time_s']:.4f} | {r['time_ratio']:.3f} | "
                  f"{r['ratio_to_floor']:.2f} | {mem} |")
    md += ["", "The perturbation runs on the features the step already computed: it costs classifier "
           "(and discriminator) passes, never a backbone pass. Target: time ratio at most 0.15 at steps=1."]
    js, mdp = write_results(out, args.out, payload, "\n".join(md))
    print("\n".join(md))
    print(f"wrote {js} and {mdp}")
    return 0
