"""Multi-process data parallelism under ``torchrun`` (NCCL on CUDA, gloo on CPU).

Methods call the segmentor's parts and the discriminators in non-standard orders (two domains forwarded
before one backward, gradient-only attack passes, several losses backpropagated separately), which the
``DistributedDataParallel`` wrapper's reducer does not support in general. So gradients are averaged
explicitly, in flat buckets, after the step's last backward: mathematically what DDP does, for every
network the method owns (segmentor and discriminators alike).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Initialise the process group from torchrun's environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local)


def average_gradients(modules: Iterable[nn.Module], info: DistInfo, bucket_bytes: int = 25 << 20) -> None:
    """All-reduce and average the ``.grad`` of every parameter that has one, in flat buckets."""
    if not info.enabled:
        return
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= info.world_size
        offset = 0
        for g in bucket:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
        bucket.clear()

    for g in grads:
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= bucket_bytes:
            flush()
            size = 0
    flush()


def broadcast_parameters(modules: Iterable[nn.Module], info: DistInfo, buffers_only: bool = False) -> None:
    """Copy rank 0's weights and buffers to every rank (``buffers_only``: BatchNorm statistics, as DDP's
    ``broadcast_buffers`` does each step, so all ranks evaluate and checkpoint the same model)."""
    if not info.enabled:
        return
    for m in modules:
        tensors = list(m.buffers()) if buffers_only else list(m.parameters()) + list(m.buffers())
        for t in tensors:
            dist.broadcast(t.data, src=0)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if this job created one."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj: object, info: DistInfo) -> list:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` for one process)."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, info: DistInfo, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` is true on any rank, so that all ranks act on it at the same iteration."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
