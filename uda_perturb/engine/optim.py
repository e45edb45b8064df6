"""Optimisers, the poly learning-rate schedule of AdaptSegNet/ADVENT and DAFormer's linear warm-up."""
from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from ..methods.base import UDAMethod

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def no_decay_parameters(module: nn.Module) -> set[int]:
    """Ids of the parameters DAFormer's AdamW does not decay: those of normalisation layers and those whose name
    holds ``pos_block``. DAFormer matches the substring ``norm`` in parameter names (MiT's LayerNorms are
    ``norm1``, ``norm2``...); our backbones name their BatchNorms otherwise (``bn1``), so the layer type decides."""
    ids = {id(p) for m in module.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    return ids | {id(p) for n, p in module.named_parameters() if "pos_block" in n}


def poly_factor(iteration: int, max_iters: int, power: float) -> float:
    """``(1 - iteration / max_iters) ** power``, clipped at 0."""
    return max(0.0, 1.0 - iteration / max_iters) ** power


def build_optimizers(method: UDAMethod, cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """SGD (or AdamW) for the segmentor (backbone at ``lr``, heads at ``head_lr_mult * lr``) and Adam for the
    discriminators; each param group remembers its base lr in ``initial_lr``. Under AdamW the backbone's
    normalisation parameters get no weight decay (DAFormer's rule, see :func:`no_decay_parameters`; the heads'
    all decay, as DAFormer's ``head`` key is matched before ``norm``) unless ``train.decay_norm``."""
    backbone, heads = method.segmentor.parameter_groups()
    groups = [{"params": backbone, "lr": cfg.lr}, {"params": heads, "lr": cfg.lr * cfg.head_lr_mult}]
    if cfg.optimizer == "adamw" and not cfg.decay_norm:
        skip = no_decay_parameters(method.segmentor.backbone)
        groups = [{"params": [p for p in backbone if id(p) not in skip], "lr": cfg.lr},
                  {"params": [p for p in backbone if id(p) in skip], "lr": cfg.lr, "weight_decay": 0.0},
                  {"params": heads, "lr": cfg.lr * cfg.head_lr_mult}]
    groups = [g for g in groups if g["params"]]
    seg_opt: torch.optim.Optimizer
    if cfg.optimizer == "adamw":
        seg_opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        seg_opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    opts: dict[str, torch.optim.Optimizer] = {"segmentor": seg_opt}
    d_params = [p for p in method.discriminator_parameters() if p.requires_grad]
    if d_params:
        opts["discriminators"] = torch.optim.Adam(d_params, lr=cfg.d_lr, betas=tuple(cfg.d_betas))  # type: ignore
    for opt in opts.values():
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return opts


def warmup_factor(iteration: int, warmup_iters: int, ratio: float) -> float:
    """mmcv's linear warm-up (DAFormer): ``1 - (1 - iteration / warmup_iters) * (1 - ratio)`` before
    ``warmup_iters``, 1 from there on."""
    if iteration >= warmup_iters:
        return 1.0
    return 1.0 - (1.0 - iteration / warmup_iters) * (1.0 - ratio)


def set_poly_lr(opts: dict[str, torch.optim.Optimizer], iteration: int, cfg: TrainConfig) -> float:
    """Apply the poly schedule (times the linear warm-up while ``iteration < cfg.warmup_iters``) to every group,
    discriminators included; returns the segmentor backbone's current lr."""
    f = poly_factor(iteration, cfg.iters, cfg.poly_power) * warmup_factor(iteration, cfg.warmup_iters,
                                                                          cfg.warmup_ratio)
    for opt in opts.values():
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * f
    return opts["segmentor"].param_groups[0]["lr"]
