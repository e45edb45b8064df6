"""The README's "your own loop" snippet runs as written on a tiny model and trains what it says it trains."""
import pathlib
import re

import torch

import uda_perturb as up
from uda_perturb.methods.mean_teacher import MeanTeacher

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def snippet(section):
    text = README.read_text().split(f"## {section}", 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_own_loop_snippet_runs_and_updates_the_teacher():
    seg = up.build_segmentor("conv1x1", backbone="lite", num_classes=4, backbone_kwargs={"width": 8})
    teacher = MeanTeacher(seg)
    opt = torch.optim.SGD(seg.parameters(), lr=0.1)
    x_s, x_t = torch.randn(2, 3, 32, 48), torch.randn(2, 3, 32, 48)
    y_s = torch.randint(0, 4, (2, 32, 48))
    before = teacher.model.head.conv.weight.clone()
    scope = {"up": up, "torch": torch, "seg": seg, "teacher": teacher, "opt": opt, "x_s": x_s, "x_t": x_t,
             "y_s": y_s, "step": 1}
    exec(snippet("Your own loop"), scope)
    assert torch.isfinite(scope["loss"]) and seg.head.conv.weight.grad is not None
    assert not torch.equal(teacher.model.head.conv.weight, before)
