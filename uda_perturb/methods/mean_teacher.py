"""The exponential-moving-average teacher of self-training methods (DACS, DAFormer, MIC)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class MeanTeacher(nn.Module):
    """A frozen copy of the student whose weights follow it by EMA; always in eval mode, never with gradients.

    After optimiser step ``t`` (1, 2, ...), ``update`` sets every parameter to ``a * teacher + (1 - a) * student``
    with ``a = min(1 - 1 / (t + 1), alpha)``, the warm-up of DACS/DAFormer's ``_update_ema`` (a = 0.5 after the
    first step). BatchNorm statistics and other buffers are copied from the student, so the eval-mode teacher
    normalises with the statistics the student has accumulated (DAFormer's transformers have none).
    """

    def __init__(self, student: nn.Module, alpha: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"EMA alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self.model = copy.deepcopy(student)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> "MeanTeacher":
        """The teacher stays in eval mode whatever its parent does (dropout off, BatchNorm on its statistics)."""
        super().train(False)
        return self

    def momentum(self, step: int) -> float:
        """The EMA factor used after optimiser step ``step``."""
        return min(1.0 - 1.0 / (step + 1), self.alpha)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        """EMA of the parameters after optimiser step ``step``; buffers copied from ``student``."""
        a = self.momentum(step)
        for t, s in zip(self.model.parameters(), student.parameters()):
            t.mul_(a).add_(s.detach().to(t.dtype), alpha=1.0 - a)
        for tb, sb in zip(self.model.buffers(), student.buffers()):
            tb.copy_(sb)

    @torch.no_grad()
    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        """The teacher's prediction (no gradients)."""
        return self.model(*args, **kwargs)
