"""What the defense costs inside someone else's training loop: AdaptSegNet's multi-level step written as its
reference code writes it (a DeepLab-v2-style model returning ``(aux, main)`` logits, its own discriminators),
with and without ``perturb_and_defend`` on both levels and both domains, the features taken with
``capture_features``. Step time as a ratio in one run, interleaved (``benchmarks/own_loop_overhead.py``).

    python benchmarks/own_loop_overhead.py --size 128 256 --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import uda_perturb as up

from ..attack_combination import position_norm
from .report import add_results_options, check_replace, environment, results_folder, write_results

LAMBDA_SEG_AUX, LAMBDA_ADV = (0.1, 1.0), (0.0002, 0.001)  # AdaptSegNet's: aux / main level


class Classifier(nn.Module):
    """AdaptSegNet's ``Classifier_Module``: dilated 3x3 convs summed (two branches, its early-return quirk)."""

    def __init__(self, cin: int, classes: int, dilations: Sequence[int] = (6, 12)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin, classes, 3, padding=d, dilation=d) for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class ResDeeplab(nn.Module):
    """A multi-level DeepLab-v2 as AdaptSegNet's code builds it: a dilated ResNet (stride 8), ``layer5`` on
    layer3 and ``layer6`` on layer4; ``forward`` returns ``(aux, main)`` logits at feature resolution."""

    def __init__(self, classes: int = 19, depth: int = 50) -> None:
        super().__init__()
        r = getattr(torchvision.models, f"resnet{depth}")(weights=None,
                                                          replace_stride_with_dilation=[False, True, True])
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.layer5, self.layer6 = Classifier(1024, classes), Classifier(2048, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.layer1(self.stem(x)))
        f3 = self.layer3(x)
        return self.layer5(f3), self.layer6(self.layer4(f3))


def fc_discriminator(classes: int, ndf: int = 64) -> nn.Module:
    """AdaptSegNet's ``FCDiscriminator``."""
    chans = [classes, ndf, ndf * 2, ndf * 4, ndf * 8]
    layers: list[nn.Module] = []
    for a, b in zip(chans[:-1], chans[1:]):
        layers += [nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers, nn.Conv2d(chans[-1], 1, 4, 2, 1))


def bce(z: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(z, torch.full_like(z, label))


def by_hand(f: torch.Tensor, logits: torch.Tensor, head: nn.Module, d: nn.Module,
            up_: Callable[[torch.Tensor], torch.Tensor], labels: Optional[torch.Tensor],
            d_out: Optional[torch.Tensor], eps: float = 0.1) -> torch.Tensor:
    """The default defense's least tensor work, written out for this model (the floor the toolkit's call is
    measured against): the classifier and discriminator objectives' input gradients from the loop's own graph
    (target: the loop's D output), each normalised per position, their sum normalised and scaled to ``eps``
    times each position's norm, then the head on ``f*`` and the source CE / target KL. No input checks, no
    statistics, no generality (the heads have no BatchNorm or dropout, eps relative, one step)."""
    clean = up_(logits)
    target = labels if labels is not None else clean.detach().argmax(1)
    objectives = [up.losses.seg_ce(clean, target)]
    if d_out is None:
        objectives.append(up.losses.bce_to(d(F.softmax(clean, dim=1)), up.losses.SOURCE_LABEL))
    else:
        objectives.append(up.losses.bce_to(d_out, up.losses.TARGET_LABEL))
    grads = [torch.autograd.grad(v, f, retain_graph=True)[0] for v in objectives]
    direction = grads[0] / position_norm(grads[0]) + grads[1] / position_norm(grads[1])
    f0 = f.detach()
    scale = eps * position_norm(f0) / position_norm(direction)
    adv = up_(head(f0 + direction * scale))
    if labels is not None:
        return up.losses.seg_ce(adv, labels)
    return up.losses.kl_div(clean.detach(), adv)


def step(model: ResDeeplab, discs: Sequence[nn.Module], cap: up.FeatureCapture, xs: torch.Tensor, ys: torch.Tensor,
         xt: torch.Tensor, defend: Union[bool, str], defense_bn_mode: str = "eval", combine: str = "balanced",
         first_step: str = "auto", stats: Optional[bool] = None) -> dict[str, float]:
    """One AdaptSegNet step (G then D), plus the defense on both levels and domains when ``defend`` (``"by_hand"``:
    :func:`by_hand`'s instead of ``perturb_and_defend``)."""
    size = (int(xs.shape[-2]), int(xs.shape[-1]))
    up_ = lambda z: F.interpolate(z, size=size, mode="bilinear", align_corners=True)  # noqa: E731
    heads = (model.layer5, model.layer6)
    logits_s = model(xs)
    feats_s = cap.take()
    loss = torch.zeros(())
    for w, z in zip(LAMBDA_SEG_AUX, logits_s):
        loss = loss + w * F.cross_entropy(up_(z), ys, ignore_index=255)
    logits_t = model(xt)
    feats_t = cap.take()
    d_outs_t = []  # D's outputs on the target maps: the target attack's first step reuses them (no D forward)
    for d, w, z in zip(discs, LAMBDA_ADV, logits_t):
        for p in d.parameters():
            p.requires_grad_(False)
        d_outs_t.append(d(F.softmax(up_(z), dim=1)))
        loss = loss + w * bce(d_outs_t[-1], 0.0)
    if defend == "by_hand":
        for level, (head, d, w) in enumerate(zip(heads, discs, LAMBDA_SEG_AUX)):
            key = ("aux", "main")[level]
            loss = loss + w * (by_hand(feats_s[key], logits_s[level], head, d, up_, ys, None)
                               + 0.1 * by_hand(feats_t[key], logits_t[level], head, d, up_, None, d_outs_t[level]))
    elif defend:  # the add-on, as a user writes it: both levels, both domains, the level's own D
        for level, (head, d, w) in enumerate(zip(heads, discs, LAMBDA_SEG_AUX)):
            key = ("aux", "main")[level]
            out_s = up.perturb_and_defend(feats_s[key], head, labels=ys, discriminator=d, clean_logits=logits_s[level],
                                          defense_bn_mode=defense_bn_mode, combine=combine, upsample=up_,
                                          first_step=first_step, objective_stats=stats)
            out_t = up.perturb_and_defend(feats_t[key], head, domain="target", discriminator=d, upsample=up_,
                                          clean_logits=logits_t[level], defense_bn_mode=defense_bn_mode,
                                          combine=combine, first_step=first_step, objective_stats=stats,
                                          clean_discriminator_output=d_outs_t[level])
            loss = loss + w * (out_s.loss + 0.1 * out_t.loss)
    loss.backward()
    d_loss = torch.zeros(())
    for d, zs, zt in zip(discs, logits_s, logits_t):
        for p in d.parameters():
            p.requires_grad_(True)
        d_loss = d_loss + 0.5 * bce(d(F.softmax(up_(zs.detach()), 1)), 0.0)
        d_loss = d_loss + 0.5 * bce(d(F.softmax(up_(zt.detach()), 1)), 1.0)
    d_loss.backward()
    return {"loss": float(loss.detach()), "d_loss": float(d_loss.detach())}


def main(argv: Optional[Sequence[str]] = None, results_dir: Optional[Path] = None) -> int:
    """Time the reference step with and without the defense, interleaved, and write the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=[128, 256])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--depth", type=int, default=50, choices=[50, 101])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default="own_loop_overhead")
    add_results_options(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = results_folder(args, results_dir)
    check_replace(args, out, args.out)
    torch.manual_seed(0)
    model = ResDeeplab(19, args.depth).train()
    discs = [fc_discriminator(19), fc_discriminator(19)]
    xs, xt = torch.randn(args.batch, 3, *args.size), torch.randn(args.batch, 3, *args.size)
    ys = torch.randint(0, 19, (args.batch, *args.size))
    # (defended, combine, first_step, objective_stats): "own" is the path before the first step came from the
    # caller's graph; objective_stats False skips the per-objective losses at f* (a discriminator forward per call);
    # "by_hand": the same defense as the least tensor work written out (by_hand), the floor of the others
    variants: dict[str, tuple[Union[bool, str], str, str, Optional[bool]]] = {
        "none": (False, "balanced", "auto", None), "balanced": (True, "balanced", "auto", None),
        "sum": (True, "sum", "auto", None), "balanced_own": (True, "balanced", "own", None),
        "balanced_nostats": (True, "balanced", "auto", False), "by_hand": ("by_hand", "balanced", "auto", False)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with up.capture_features(model, main="layer4", aux="layer3") as cap:
        for rep in range(args.repeats + 1):
            for key, (defend, combine, first, stats) in variants.items():
                model.zero_grad(set_to_none=True)
                for d in discs:
                    d.zero_grad(set_to_none=True)
                t = time.perf_counter()
                step(model, discs, cap, xs, ys, xt, defend, combine=combine, first_step=first, stats=stats)
                if rep:
                    times[key].append(time.perf_counter() - t)
    base, defended, summed, own, quiet, floor = (statistics.median(times[k]) for k in variants)
    md = [f"# The defense inside AdaptSegNet's own multi-level step (ResNet-{args.depth} DeepLab-v2, input "
          f"{args.batch}+{args.batch} x 3 x {args.size[0]} x {args.size[1]}, cpu)", "",
          "AdaptSegNet's step as its code writes it (`(aux, main)` logits, its FCDiscriminators, lambda_seg 0.1 / 1, "
          "lambda_adv 0.0002 / 0.001), with and without `perturb_and_defend` on both levels (layer3 -> aux head, "
          "layer4 -> main head, each with its own D) and both domains (source CE, target KL x 0.1; each level's "
          "defense weighted like its segmentation loss), features taken with `capture_features`, "
          f"`defense_bn_mode='eval'`. Median of {args.repeats} interleaved steps.", "",
          "| step | seconds | ratio |", "|---|---|---|",
          f"| AdaptSegNet | {base:.3f} | 1.00 |",
          f"| AdaptSegNet + defense (2 levels x 2 domains, combine=balanced, the default) | {defended:.3f} | "
          f"{defended / base:.2f} |",
          f"| AdaptSegNet + defense (2 levels x 2 domains, combine=sum) | {summed:.3f} | {summed / base:.2f} |",
          f"| AdaptSegNet + defense (balanced, first_step=own: the attack's own head forward) | {own:.3f} | "
          f"{own / base:.2f} |",
          f"| AdaptSegNet + defense (balanced, objective_stats=False: no per-objective losses at f*) | {quiet:.3f} | "
          f"{quiet / base:.2f} |",
          f"| AdaptSegNet + the same defense written by hand: its least tensor work, no checks, no statistics "
          f"(the floor) | {floor:.3f} | {floor / base:.2f} |", "",
          "The first attack step takes its gradients from the loop's own forward graph (`first_step='auto'`: "
          "the heads have no BatchNorm or dropout) unless `own`. D sees the loop's own upsampling (`upsample=`). "
          f"Goal: at most 1.20x. The default call's overhead over the floor: {(defended - floor) / base:.3f} of an "
          f"AdaptSegNet step ({(quiet - floor) / base:.3f} without statistics)."]
    write_results(out, args.out, {"environment": environment(), "size": args.size, "batch": args.batch,
                                  "depth": args.depth, "repeats": args.repeats, "threads": torch.get_num_threads(),
                                  "seconds": {"adaptsegnet": base, "defended": defended, "defended_sum": summed,
                                              "defended_own_first_step": own, "defended_no_stats": quiet,
                                              "by_hand_floor": floor},
                                  "ratio": defended / base, "ratio_sum": summed / base, "ratio_own": own / base,
                                  "ratio_no_stats": quiet / base, "ratio_floor": floor / base},
                  "\n".join(md))
    print("\n".join(md))
    return 0
