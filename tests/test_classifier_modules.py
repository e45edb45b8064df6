"""Freezing reaches the modules behind any classifier callable: a bound method, a functools.partial, a lambda's
closure cell, global or default, a callable object; where none can be found the call is refused naming
``modules=``."""
import functools

import pytest
import torch
from torch import nn

import uda_perturb as up
from uda_perturb.classifier_modules import modules_behind

K = 4


class DictHead(nn.Module):
    """A head returning torchvision's dict, with BatchNorm and dropout."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(6, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Conv2d(8, K, 1))

    def forward(self, f):
        return {"out": self.body(f)}


class View:
    """A plain object (not a module) holding the head, as a user's wrapper might."""

    def __init__(self, head):
        self.head = head

    def classify(self, f):
        return self.head(f)["out"]

    def __call__(self, f):
        return self.classify(f)


def pick(head, f):
    return head(f)["out"]


GLOBAL_HEAD = DictHead()


def kinds(head):
    def closure(f):
        return head(f)["out"]

    return {
        "bound method": View(head).classify,
        "callable object": View(head),
        "partial": functools.partial(pick, head),
        "closure": closure,
        "default": lambda f, h=head: h(f)["out"],
    }


@pytest.mark.parametrize("kind", ["bound method", "callable object", "partial", "closure", "default", "global"])
def test_an_attack_behind_any_callable_changes_no_batchnorm_buffer(kind):
    head = GLOBAL_HEAD if kind == "global" else DictHead()
    classifier = (lambda f: GLOBAL_HEAD(f)["out"]) if kind == "global" else kinds(head)[kind]
    assert modules_behind(classifier) == [head]
    head.train()
    bn = head.body[1]
    before = [b.clone() for b in bn.buffers()]
    f = torch.randn(2, 6, 5, 5)
    out = up.perturb_and_defend(f, classifier, domain="target", defense_bn_mode="eval", steps=2)
    assert all(torch.equal(a, b) for a, b in zip(before, bn.buffers()))  # attack and defense pass: none changed
    assert head.training and bn.training  # modes restored
    out.loss.backward()
    assert head.body[4].weight.grad is not None


def test_a_callable_with_no_module_is_refused_naming_modules_and_modules_given_are_frozen():
    head = DictHead().train()
    weights = [p.detach() for p in head.parameters()]
    f = torch.randn(2, 6, 5, 5)

    def functional(z):  # the parameters as plain tensors: nothing to find
        return torch.nn.functional.conv2d(z, weights[0][:K, :, :, :].new_ones(K, 6, 1, 1))

    with pytest.raises(ValueError, match=r"no nn.Module found behind the classifier .*functional: pass modules="):
        up.perturb_and_defend(f, functional, domain="target")
    up.perturb_and_defend(f, functional, domain="target", modules=[])  # none, on purpose
    bn = head.body[1]
    before = bn.running_mean.clone()
    opaque = lambda z: head.__call__(z)["out"]  # noqa: E731  found anyway (the closure holds head)
    up.perturb_and_defend(f, opaque, domain="target", defense_bn_mode="eval", modules=[head])
    assert torch.equal(bn.running_mean, before)
    with pytest.raises(TypeError, match="modules= takes nn.Module objects, got str"):
        up.perturb_and_defend(f, head.body, domain="target", modules=["head"])
