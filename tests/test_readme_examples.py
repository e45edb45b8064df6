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


def snippets(section):
    text = README.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_capture_snippet_runs_on_a_model_that_returns_logits_and_trains_its_head():
    from test_own_loop import RefModel, disc

    torch.manual_seed(0)
    model = RefModel()
    x_s, x_t = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    scope = {"up": up, "torch": torch, "model": model, "x_s": x_s, "x_t": x_t, "y_s": torch.randint(0, 5, (2, 32, 32)),
             "D_main": disc(), "D_aux": disc(), "loss": 0.0}
    exec(snippets("Your own loop")[1], scope)
    scope["loss"].backward()
    heads = (model.layer5.out.weight.grad, model.layer6.out.weight.grad)
    assert all(g is not None for g in heads) and model.layer4[0].weight.grad is None  # both heads, nothing else
    assert not model.layer4._forward_hooks  # removed
