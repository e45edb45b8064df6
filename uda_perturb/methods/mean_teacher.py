"""The exponential-moving-average teacher of self-training methods (DACS, DAFormer, MIC)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..model_state import DROPOUT_LAYERS

TEACHER_BN = ("batch", "stored")


class MeanTeacher(nn.Module):
    """A copy of the student whose parameters follow it by EMA; never with gradients, dropout always off.

    After optimiser step ``t`` (1, 2, ...), ``update`` sets every parameter to ``a * teacher + (1 - a) * student``
    with ``a = min(1 - 1 / (t + 1), alpha)``, the warm-up of DAFormer's ``_update_ema``, whose first update comes
    at its iteration 1 (a = 0.5 after the first step). DACS's ``trainUDA.py`` applies the same formula from its
    iteration 0, so there a = 0 after the first step (the teacher becomes the student); we follow DAFormer.

    ``bn="batch"`` (the references): the teacher runs in train mode with its dropout (and timm's DropPath)
    switched off, as DAFormer's ``forward_train`` does before ``encode_decode`` of the target image, so its
    BatchNorm normalises with the statistics of the batch it labels; the EMA covers parameters only (DAFormer's
    ``_update_ema`` zips ``parameters()``). ``bn="stored"`` (an option of ours, not the references'): the
    teacher stays in eval mode and copies the student's buffers after every update, so it normalises with the
    running statistics the student has accumulated.
    """

    def __init__(self, student: nn.Module, alpha: float = 0.99, bn: str = "batch") -> None:
        super().__init__()
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"EMA alpha must be in [0, 1), got {alpha}")
        if bn not in TEACHER_BN:
            raise ValueError(f"teacher BatchNorm mode must be one of {TEACHER_BN}, got {bn!r}")
        self.alpha, self.bn = alpha, bn
        self.model = copy.deepcopy(student)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> "MeanTeacher":
        """Whatever its parent asks: ``bn="batch"`` puts the model in train mode with every dropout/DropPath
        layer in eval mode; ``bn="stored"`` keeps the whole model in eval mode."""
        super().train(False)
        self.model.train(self.bn == "batch")
        for m in self.model.modules():
            if isinstance(m, DROPOUT_LAYERS) or type(m).__name__ == "DropPath":
                m.train(False)
        return self

    def momentum(self, step: int) -> float:
        """The EMA factor used after optimiser step ``step``."""
        return min(1.0 - 1.0 / (step + 1), self.alpha)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        """EMA of the parameters after optimiser step ``step``; with ``bn="stored"`` buffers are copied from
        ``student``."""
        a = self.momentum(step)
        for t, s in zip(self.model.parameters(), student.parameters()):
            t.mul_(a).add_(s.detach().to(t.dtype), alpha=1.0 - a)
        if self.bn == "stored":
            for tb, sb in zip(self.model.buffers(), student.buffers()):
                tb.copy_(sb)

    @torch.no_grad()
    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        """The teacher's prediction (no gradients)."""
        return self.model(*args, **kwargs)
