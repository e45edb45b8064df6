import pytest

import uda_perturb as up
from uda_perturb.registry import Registry


def test_register_get_build_and_list_filters():
    reg = Registry("widget")

    @reg.register()
    def alpha(x=1):
        return ("alpha", x)

    reg.register("beta", lambda x=2: ("beta", x))
    reg.register("alphabet")(lambda: "ab")
    assert reg.get("alpha") is alpha
    assert reg.build("alpha", x=5) == ("alpha", 5)
    assert reg.build({"name": "beta", "x": 7}) == ("beta", 7)
    assert reg.build("beta", x=None) == ("beta", 2)  # None kwargs are pruned
    assert reg.list() == ["alpha", "alphabet", "beta"]
    assert reg.list("alpha*") == ["alpha", "alphabet"]
    assert reg.list("*", exclude="*bet") == ["alpha", "beta"]
    assert reg.list(["b*", "alphabet"]) == ["alphabet", "beta"]


def test_duplicate_rejected():
    reg = Registry("widget")
    reg.register("a", object())
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a", object())


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="Did you mean 'resnet101'"):
        up.build_backbone("resnet10l")
    with pytest.raises(KeyError, match="Did you mean 'discriminator'"):
        up.build_attack("discriminater")
    with pytest.raises(KeyError, match="needs a 'name' key"):
        up.ATTACKS.build({"weight": 1})


def test_public_listers_and_third_party_registration():
    assert {"classifier", "entropy", "discriminator"} <= set(up.list_attacks())
    assert {"ce", "kl", "entropy", "pseudo_ce"} <= set(up.list_defenses())
    assert up.list_backbones("resnet*") == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    assert {"aspp_v2", "deeplabv3", "conv1x1"} <= set(up.list_heads())
    assert {"fc", "pixel"} <= set(up.list_discriminators())

    @up.register_attack("test_zero_attack")
    class Zero(up.AttackObjective):
        def forward(self, ctx, features, logits):
            return logits.sum() * 0

    try:
        assert "test_zero_attack" in up.list_attacks()
        assert isinstance(up.build_attack("test_zero_attack"), Zero)
    finally:
        up.ATTACKS.unregister("test_zero_attack")
