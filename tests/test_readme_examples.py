"""Every Python block of the README runs as written, in a fresh namespace (a user can paste it), and trains what
it says it trains."""
import pathlib
import re

import pytest
import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def blocks():
    """``(section, code)`` of every Python block, in order."""
    out, section = [], ""
    for part in re.split(r"(?m)^(## .*)$", README.read_text()):
        if part.startswith("## "):
            section = part[3:].strip()
        else:
            out += [(section, code) for code in re.findall(r"```python\n(.*?)```", part, re.S)]
    return out


def run(code):
    torch.manual_seed(0)
    scope = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), scope)
    return scope


def test_the_readme_has_the_blocks_these_tests_name():
    sections = [s for s, _ in blocks()]
    assert sections == ["First: the defense in your own training step", "Quick API", "Your own loop",
                        "Your own loop"]


def first_example(scope, out):
    model = scope["model"]
    assert torch.isfinite(scope["loss"])
    assert model.classifier[-1].weight.grad is not None and model.backbone["0"][0].weight.grad is not None


def quick_api(scope, out):
    assert scope["seg"].head.convs[0].weight.grad is not None  # F trained by the losses
    assert re.fullmatch(r"D's loss \d+\.\d{3} at f, \d+\.\d{3} at f\* \(rise [+-]\d+\.\d{3}\)\n", out)


def self_training(scope, out):
    import uda_perturb as up

    seg, teacher = scope["seg"], scope["teacher"]
    assert torch.isfinite(scope["loss"]) and seg.head.conv.weight.grad is not None
    torch.manual_seed(0)  # the block's first draw builds the model: its initial weights, again
    start = up.build_segmentor("conv1x1", backbone="lite", num_classes=4, backbone_kwargs={"width": 8})
    w0, w1, wt = (m.head.conv.weight.detach() for m in (start, seg, teacher.model))
    assert not torch.equal(w0, w1)  # the student stepped
    a = float(((wt - w1) * (w0 - w1)).sum() / (w0 - w1).pow(2).sum())
    torch.testing.assert_close(wt, w1 + a * (w0 - w1))  # the teacher moved towards it: an EMA of the two
    assert a == pytest.approx(0.5, abs=1e-4)  # DACS's ramp at step 1: min(1 - 1 / (step + 1), 0.99)


def capture(scope, out):
    model = scope["model"]
    assert model.layer5.weight.grad is not None and model.layer6.weight.grad is not None
    assert not model.layer4._forward_hooks and not model.layer3._forward_hooks


CHECKS = [first_example, quick_api, self_training, capture]


@pytest.mark.parametrize("index", range(len(CHECKS)))
def test_every_python_block_runs_verbatim_and_does_what_it_says(index, capsys):
    section, code = blocks()[index]
    scope = run(code)
    CHECKS[index](scope, capsys.readouterr().out)
