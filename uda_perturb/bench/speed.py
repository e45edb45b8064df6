"""Training-step time and peak memory of each method, as ratios to source-only (and APODA / AdaptSegNet),
measured in one run on the same backbone and input; plus the perturbation's cost against its step count.

Time: all methods' steps interleaved round-robin in one process, median of ``--repeats``.
Memory: CUDA ``max_memory_allocated`` of one step; on CPU each method runs a warm-up step and then one
measured step in a fresh subprocess, reporting peak RSS (sampled every millisecond) during the measured step
minus RSS before it, after ``malloc_trim`` hands freed blocks back to the OS.

    python benchmarks/speed.py --model deeplabv2_r50 --size 128 256
    python benchmarks/speed.py --model cpu --size 120 160
"""
from __future__ import annotations

import argparse
import inspect
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

import uda_perturb as up

from ..methods import build_method
from ..registry import METHODS as METHOD_REGISTRY
from .apoda_by_hand import ByHandDefense
from .report import add_results_options, check_replace, results_folder, write_results

MODELS: dict[str, dict[str, Any]] = {
    "deeplabv2_r50": dict(head="aspp_v2", backbone="resnet50", num_classes=19, multi_level=True,
                          backbone_kwargs={"bn": "affine_frozen"}),
    "deeplabv2_r101": dict(head="aspp_v2", backbone="resnet101", num_classes=19, multi_level=True,
                           backbone_kwargs={"bn": "affine_frozen"}),
    "cpu": dict(head="aspp_v2", backbone="lite", num_classes=11, backbone_kwargs={"width": 24},
                head_kwargs={"dilations": (1, 2, 4, 6)}),
    # the comparison's model: camvid_day2dusk_pretrained at 120x160 (weights do not change the time)
    "camvid_pretrained": dict(head="deeplabv3", backbone="efficientnet_lite0", num_classes=11,
                              backbone_kwargs={"output_stride": 8, "pretrained": False},
                              head_kwargs={"atrous_rates": (2, 4, 6)}),
    # the same at 180x240 (camvid_day2dusk_pretrained_hr's head rates)
    # the transformer UDA network at CPU size (camvid_day2dusk_daformer_b0): MiT-B0 + DAFormer's fusion head
    "mit_b0_daformer": dict(head="daformer", backbone="mit_b0", num_classes=11),
    "pretrained_lite0": dict(head="deeplabv3", backbone="efficientnet_lite0", num_classes=11,
                             backbone_kwargs={"output_stride": 8, "pretrained": False},
                             head_kwargs={"atrous_rates": (3, 6, 9)}),
}
METHODS: dict[str, tuple[str, list[Any], dict[str, Any]]] = {
    "source_only": ("source_only", [], {}),
    "adaptsegnet": ("adaptsegnet", [], {}),
    "advent": ("advent", [], {"minent_weights": [0.001]}),
    "minent": ("minent", [], {}),
    "apoda": ("apoda", [], {}),
    "apoda_sum": ("apoda", [], {"perturbation": {"combine": "sum"}}),
    # the first attack step from the attack's own head forward (the path before first_step: auto), and from the
    # caller's graph whatever the head's BatchNorm (first_step: caller)
    "apoda_own": ("apoda", [], {"perturbation": {"first_step": "own"}}),
    "apoda_caller": ("apoda", [], {"perturbation": {"first_step": "caller"}}),
    # both cheaper rules at once: the caller's graph and one backward of the summed objectives (both change f*)
    "apoda_caller_sum": ("apoda", [], {"perturbation": {"first_step": "caller", "combine": "sum"}}),
    # the floor of apoda's default: AdaptSegNet plus its defense written out as the least tensor work (by_hand)
    "apoda_by_hand": ("adaptsegnet", [ByHandDefense()], {}),  # stateless: one instance serves every build
    "apoda_separate": ("apoda", [], {"perturbation": {"combine": "separate"}}),
    "apoda_steps3": ("apoda", [], {"perturbation": {"steps": 3}}),
    "advent+perturbation": ("advent", ["perturbation"], {"minent_weights": [0.001]}),
    "apoda+random": ("apoda", [], {"perturbation": {"source_attacks": ["random"], "target_attacks": ["random"]}}),
    "dacs": ("dacs", [], {}),
    "dacs+perturbation": ("dacs", ["perturbation"], {}),
    "dacs+random": ("dacs", [{"name": "perturbation", "source_attacks": ["random"]}], {}),
    "dacs+dropout": ("dacs", [{"name": "perturbation", "source_attacks": [{"name": "dropout", "rate": 0.5}]}], {}),
    "dacs+mic": ("dacs", ["mic"], {}),
    "dacs+mic+perturbation": ("dacs", ["mic", "perturbation"], {}),
}
def make(model: str, method: str, device: torch.device, channels_last: bool = False, ndf: Optional[int] = None,
         frozen_stages: int = 0):
    """The method on the model, in train mode; channels-last as ``train.channels_last`` does; the backbone's
    stem and first ``frozen_stages`` stages frozen (``model.backbone_options.frozen_stages``)."""
    torch.manual_seed(0)
    spec = MODELS[model]
    if frozen_stages:
        spec = {**spec, "backbone_kwargs": {**spec.get("backbone_kwargs", {}), "frozen_stages": frozen_stages}}
    seg = up.build_segmentor(**spec)
    name, addons, opts = METHODS[method]
    # ``--ndf`` sets the discriminator width of the methods that have one (the comparison: 32; paper code: 64)
    if ndf is not None and "ndf" in inspect.signature(METHOD_REGISTRY.get(name)).parameters:
        opts = {**opts, "ndf": ndf}
    m = build_method(name, seg, addons, opts).to(device).train()
    m.record_stats = False  # as 9 of 10 training steps (train.log_every: 10): no statistics for the log
    return m.to(memory_format=torch.channels_last) if channels_last else m


def batches(model: str, size, batch: int, device: torch.device, channels_last: bool = False):
    """One random source batch (with labels) and one target batch."""
    k = MODELS[model]["num_classes"]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    s = {"image": torch.randn(batch, 3, *size, device=device).contiguous(memory_format=fmt),
         "label": torch.randint(0, k, (batch, *size), device=device)}
    return s, {"image": torch.randn(batch, 3, *size, device=device).contiguous(memory_format=fmt)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _release_freed_memory() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS then over-counts the baseline a little
        pass


def memory_child(args: argparse.Namespace) -> None:
    """Subprocess entry: print the peak extra memory (MB) of one training step on CPU, sampling RSS every
    millisecond from a thread (torch releases the GIL inside its kernels)."""
    import threading

    torch.set_num_threads(2)
    m = make(args.model, args.memory_child, torch.device("cpu"), args.channels_last, args.ndf, args.frozen_stages)
    s, t = batches(args.model, args.size, args.batch, torch.device("cpu"), args.channels_last)
    m.training_step(s, t)  # warm-up: lazy allocations, kernel caches
    m.zero_grad(set_to_none=True)
    _release_freed_memory()  # glibc keeps freed blocks: hand them back so RSS shows only live memory
    base = rss_mb()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.001)

    th = threading.Thread(target=sample)
    th.start()
    m.training_step(s, t)
    done.set()
    th.join()
    print(json.dumps({"peak_extra_mb": peak[0] - base}))


def measure_memory(args, device: torch.device) -> dict[str, float]:
    out = {}
    for method in args.methods:
        if device.type == "cuda":
            m = make(args.model, method, device, args.channels_last, args.ndf, args.frozen_stages)
            s, t = batches(args.model, args.size, args.batch, device, args.channels_last)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            m.training_step(s, t)
            torch.cuda.synchronize()
            out[method] = (torch.cuda.max_memory_allocated() - base) / 2**20
            del m
            torch.cuda.empty_cache()
        else:
            cmd = [sys.executable, "-m", "uda_perturb.bench.speed", "--memory-child", method, "--model", args.model,
                   "--size", *map(str, args.size), "--batch", str(args.batch)]
            cmd += (["--channels-last"] if args.channels_last else []) + (["--ndf", str(args.ndf)] if args.ndf else [])
            cmd += ["--frozen-stages", str(args.frozen_stages)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[method] = json.loads(res.stdout.strip().splitlines()[-1])["peak_extra_mb"]
    return out


def measure_time(args, device: torch.device) -> dict[str, float]:
    models = {m: make(args.model, m, device, args.channels_last, args.ndf, args.frozen_stages) for m in args.methods}
    s, t = batches(args.model, args.size, args.batch, device, args.channels_last)
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    for rep in range(args.repeats + 1):
        for name, m in models.items():
            m.zero_grad(set_to_none=True)
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                m.training_step(s, t)
            sync(device)
            if rep > 0:  # first round is warm-up
                times[name].append(time.perf_counter() - start)
    return {m: statistics.median(v) for m, v in times.items()}


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="deeplabv2_r50")
    ap.add_argument("--size", type=int, nargs=2, default=[128, 256])
    ap.add_argument("--batch", type=int, default=1, help="per domain")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--channels-last", action="store_true", help="model and images channels-last")
    ap.add_argument("--threads", type=int, help="torch threads (benchmark runs use 1 each, 2 in parallel)")
    ap.add_argument("--skip-memory", action="store_true", help="time only")
    ap.add_argument("--ndf", type=int, help="discriminator width (default: each method's, 64; the comparison: 32)")
    ap.add_argument("--frozen-stages", type=int, default=0,
                    help="freeze the backbone's stem and first K stages (timm backbones; default 0)")
    ap.add_argument("--out")
    add_results_options(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return 0
    device = torch.device(args.device)
    name = args.out or f"speed_{args.model}_{device.type}{'_amp' if args.amp else ''}"
    out = results_folder(args, results_dir)
    check_replace(args, out, name)
    step = measure_time(args, device)
    mem = {m: float("nan") for m in args.methods} if args.skip_memory else measure_memory(args, device)
    base_t, base_m = step["source_only"], mem["source_only"]
    asn_t, asn_m = step.get("adaptsegnet"), mem.get("adaptsegnet")
    rows = [{"method": m, "step_s": step[m], "time_vs_source_only": step[m] / base_t,
             "time_vs_adaptsegnet": step[m] / asn_t if asn_t else None, "peak_mb": mem[m],
             "mem_vs_source_only": mem[m] / base_m if base_m else None,
             "mem_vs_adaptsegnet": mem[m] / asn_m if asn_m else None} for m in args.methods]
    title = (f"# Step time and peak memory per method ({args.model}, input {args.batch}+{args.batch} x 3 x "
             f"{args.size[0]} x {args.size[1]}, {device.type}{', bf16' if args.amp else ''}"
             f"{f', stem + {args.frozen_stages} stages frozen' if args.frozen_stages else ''})")
    md = [title, "", f"Median of {args.repeats} interleaved steps; memory: "
          + ("CUDA max_memory_allocated of one step." if device.type == "cuda"
             else "peak RSS growth of one step in a fresh process."), "",
          "| method | step (s) | time / source-only | time / AdaptSegNet | peak step memory (MB) | mem / source-only "
          "| mem / AdaptSegNet |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        md.append(f"| {r['method']} | {r['step_s']:.3f} | {f(r['time_vs_source_only'])} | "
                  f"{f(r['time_vs_adaptsegnet'])} | {r['peak_mb']:.0f} | {f(r['mem_vs_source_only'])} | "
                  f"{f(r['mem_vs_adaptsegnet'])} |")
    md += ["", "Targets (issue 43): APODA at most 1.20x an AdaptSegNet step on DeepLab-v2 R50 and R101, 1.25x on the "
           "comparison model; peak memory at most 1.10x. `apoda_own`: the first attack step from the attack's own "
           "head forward (before `first_step: auto`); `apoda_caller`: from the caller's graph whatever the head; "
           "`apoda_caller_sum`: that and one backward of the summed objectives (`combine: sum`); `apoda_by_hand`: "
           "AdaptSegNet plus apoda's default defense written out as its least tensor work (the floor)."]
    payload = {"model": args.model, "size": args.size, "batch": args.batch, "rows": rows, "repeats": args.repeats,
               "device": str(device), "amp": args.amp, "channels_last": args.channels_last, "ndf": args.ndf,
               "threads": torch.get_num_threads(), "frozen_stages": args.frozen_stages}
    write_results(out, name, payload, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":  # the memory measurement's child process
    sys.exit(main())
