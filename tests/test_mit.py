"""The transformer UDA network: MiT encoders (against Hugging Face's implementation when it is installed, and the
published sizes), DAFormer's and SegFormer's heads with the perturbation on the fused map, a DAFormer / MIC
checkpoint's every tensor, and a training step of DACS + MIC + the perturbation on MiT-B0."""
import re
from pathlib import Path

import pytest
import torch

import uda_perturb as up
from uda_perturb.errors import CheckpointError
from uda_perturb.models.weights import load_segmentor_weights

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_mit_stages_and_sizes():
    torch.manual_seed(0)
    net = up.build_backbone("mit_b0").eval()
    out = net(torch.randn(1, 3, 64, 96))
    assert [tuple(out[f"stage{i}"].shape[1:]) for i in range(1, 5)] == [(32, 16, 24), (64, 8, 12), (160, 4, 6),
                                                                        (256, 2, 3)]
    assert out["out"] is out["stage4"] and out["aux"] is out["stage3"] and net.stage_channels == [32, 64, 160, 256]
    # SegFormer's published encoder sizes (Table 1): MiT-B1 13.1M, B2 24.2M parameters (to its rounding);
    # B0 as Hugging Face's B0 configuration counts it (3,319,392)
    assert abs(_params(up.build_backbone("mit_b1")) / 1e6 - 13.1) < 0.1
    assert abs(_params(up.build_backbone("mit_b2")) / 1e6 - 24.2) < 0.1 and _params(net) == 3_319_392
    assert {"mit_b0", "mit_b5"} <= set(up.list_backbones()) and {"daformer", "segformer"} <= set(up.list_heads())


def _hf_to_mit(state):
    """transformers 5.x Segformer names -> the reference MiT's, written here independently of the package."""
    out = {}
    for k, v in state.items():
        m = re.match(r"stages\.(\d)\.(.*)", k)
        i, rest = int(m.group(1)) + 1, m.group(2)
        if rest.startswith("patch_embeddings."):
            out[f"patch_embed{i}." + rest.split(".", 1)[1].replace("layer_norm", "norm")] = v
        elif rest.startswith("layer_norm."):
            out[f"norm{i}." + rest.split(".", 1)[1]] = v
        else:
            j, part = re.match(r"blocks\.(\d+)\.(.*)", rest).groups()
            part = (part.replace("layernorm_before", "norm1").replace("layernorm_after", "norm2")
                    .replace("attention.q_proj", "attn.q").replace("attention.o_proj", "attn.proj")
                    .replace("attention.sequence_reduction.sequence_reduction", "attn.sr")
                    .replace("attention.sequence_reduction.layer_norm", "attn.norm"))
            if "attention.k_proj" in part:
                value = state[k.replace("k_proj", "v_proj")]
                out[f"block{i}.{j}." + part.replace("attention.k_proj", "attn.kv")] = torch.cat([v, value])
            elif "attention.v_proj" not in part:
                out[f"block{i}.{j}." + part] = v
    return out


def test_the_encoder_matches_hugging_faces_with_the_same_weights():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "SegformerModel"):
        pytest.skip("this transformers has no Segformer")
    torch.manual_seed(1)
    hf = transformers.SegformerModel(transformers.SegformerConfig()).eval()  # the B0 configuration
    state = hf.state_dict()
    if not any(k.startswith("stages.") for k in state):
        pytest.skip("a transformers 4.x key layout; the test maps 5.x's")
    ours = up.build_backbone("mit_b0").eval()
    ours.load_state_dict(_hf_to_mit(state))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        theirs, mine = hf(pixel_values=x, output_hidden_states=True).hidden_states, ours(x)
    for i, t in enumerate(theirs[-4:], 1):
        torch.testing.assert_close(mine[f"stage{i}"], t, atol=1e-5, rtol=1e-5)


def test_an_hf_snapshot_in_its_file_layout_loads(tmp_path):
    """HF snapshot files keep the 4.x names (``encoder.block.0.0.attention.self.query`` ...): built here from
    an encoder by the inverse of the documented renames, they load back to the same tensors."""
    torch.manual_seed(2)
    src = up.build_backbone("mit_b0")
    files = {}
    for k, v in src.state_dict().items():
        k2 = re.sub(r"patch_embed(\d)\.norm", lambda m: f"patch_embeddings.{int(m.group(1)) - 1}.layer_norm", k)
        k2 = re.sub(r"patch_embed(\d)\.", lambda m: f"patch_embeddings.{int(m.group(1)) - 1}.", k2)
        k2 = re.sub(r"^block(\d)\.", lambda m: f"block.{int(m.group(1)) - 1}.", k2)
        k2 = re.sub(r"^norm(\d)\.", lambda m: f"layer_norm.{int(m.group(1)) - 1}.", k2)
        for a, b in (("norm1", "layer_norm_1"), ("norm2", "layer_norm_2"), ("attn.q.", "attention.self.query."),
                     ("attn.sr.", "attention.self.sr."), ("attn.norm.", "attention.self.layer_norm."),
                     ("attn.proj.", "attention.output.dense."), ("mlp.fc1.", "mlp.dense1."),
                     ("mlp.fc2.", "mlp.dense2.")):
            k2 = k2.replace(a, b)
        if "attn.kv." in k2:
            half = v.shape[0] // 2
            files["segformer.encoder." + k2.replace("attn.kv.", "attention.self.key.")] = v[:half]
            files["segformer.encoder." + k2.replace("attn.kv.", "attention.self.value.")] = v[half:]
        else:
            files["segformer.encoder." + k2] = v
    files["classifier.weight"] = torch.zeros(1000, 256)
    (tmp_path / "snap").mkdir()
    torch.save(files, tmp_path / "snap" / "pytorch_model.bin")
    net = up.build_backbone("mit_b0", weights=str(tmp_path / "snap"))
    assert net.input_normalization == "imagenet"
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in src.state_dict().items())


def _daformer(num_classes=5, seed=0):
    torch.manual_seed(seed)
    return up.build_segmentor("daformer", backbone="mit_b0", num_classes=num_classes)


def test_the_fusion_is_g_and_the_classifier_f():
    seg = _daformer().eval()
    x = torch.randn(2, 3, 64, 96)
    out = seg.forward_all(x)
    assert out.features.shape == (2, 256, 16, 24) and out.logits.shape == (2, 5, 16, 24)
    assert out.encoder_features.shape == (2, 256, 2, 3)  # MiT-B0's last stage, where imnet_fd reads
    torch.testing.assert_close(seg.classify(seg.features(x)), out.logits)
    assert [n for n, _ in seg.classifier.named_parameters()] == ["conv_seg.weight", "conv_seg.bias"]
    # the fusion trains at the head's lr, as DAFormer's whole decode head does (paramwise head lr_mult 10)
    backbone, heads = seg.parameter_groups()
    fusion = {id(p) for p in seg.backbone.fusion.parameters()}
    assert fusion <= {id(p) for p in heads} and not fusion & {id(p) for p in backbone}
    # the perturbation on the fused map: each position moved by eps relative to its norm
    res = up.perturb_and_defend(out.features.detach(), seg.classifier, domain="target", eps=0.1, attacks=["entropy"],
                                defenses=["kl"])
    moved = (res.perturbed - out.features.detach()).norm(dim=1)
    torch.testing.assert_close(moved, 0.1 * out.features.detach().norm(dim=1), atol=1e-4, rtol=1e-4)
    seg2 = up.build_segmentor("segformer", backbone="mit_b0", num_classes=5)
    assert seg2.forward_all(x).features.shape == (2, 256, 16, 24)
    with pytest.raises(ValueError, match="four stages of a MiT backbone"):
        up.build_segmentor("daformer", backbone="lite", num_classes=5, backbone_kwargs={"width": 8})


def _mmseg_names(seg):
    """This segmentor's tensors in DAFormer's checkpoint layout (the student's ``model.`` prefix)."""
    out = {}
    for k, v in seg.state_dict().items():
        k = k.replace("backbone.body.", "model.backbone.").replace("backbone.fusion.", "model.decode_head.")
        out[k.replace("head.", "model.decode_head.") if k.startswith("head.") else k] = v
    return out


def test_a_daformer_checkpoint_loads_every_tensor_and_refuses_one_without_a_place(tmp_path, capsys):
    src = _daformer(19, seed=3)
    student = _mmseg_names(src)
    # names and shapes of the reference config (daformer_sepaspp, embed 256, dilations 1/6/12/18) on MiT-B0
    assert student["model.decode_head.fuse_layer.aspp_modules.1.depthwise_conv.conv.weight"].shape == (1024, 1, 3, 3)
    assert student["model.decode_head.fuse_layer.aspp_modules.0.conv.weight"].shape == (256, 1024, 1, 1)
    assert student["model.decode_head.fuse_layer.bottleneck.conv.weight"].shape == (256, 1024, 3, 3)
    assert student["model.decode_head.embed_layers.3.proj.weight"].shape == (256, 256)
    assert student["model.backbone.block1.0.attn.kv.weight"].shape == (64, 32)
    assert student["model.decode_head.conv_seg.weight"].shape == (19, 256, 1, 1)
    state = {**student, **{k.replace("model.", "ema_model.", 1): v + 1 for k, v in student.items()},
             **{k.replace("model.", "imnet_model.", 1): v for k, v in student.items() if ".backbone." in k}}
    torch.save({"meta": {"iter": 40000, "CLASSES": ["road"] * 19}, "state_dict": state}, tmp_path / "daformer.pth")
    seg = _daformer(19, seed=4)
    report = load_segmentor_weights(seg, str(tmp_path / "daformer.pth"))
    assert report["format"] == "mmseg_uda" and report["loaded"] == len(src.state_dict())
    assert report["not_loaded"] == ["ema_model", "imnet_model"]
    assert all(torch.equal(v, seg.state_dict()[k]) for k, v in src.state_dict().items())  # the student, not EMA
    bad = {**student, "model.decode_head.context_layer.weight": torch.zeros(1)}
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="mmseg key 'model.decode_head.context_layer.weight' has no place"):
        load_segmentor_weights(_daformer(19), str(tmp_path / "bad.pth"))
    with pytest.raises(CheckpointError, match="'model.decode_head.conv_seg.weight' has shape"):
        load_segmentor_weights(_daformer(5), str(tmp_path / "daformer.pth"))
    # the ImageNet encoder alone (SegFormer's mit_b0.pth: its classification head is not the encoder's)
    torch.save({**src.backbone.body.state_dict(), "head.weight": torch.zeros(1000, 256)}, tmp_path / "mit_b0.pth")
    enc = up.build_backbone("mit_b0", weights=str(tmp_path / "mit_b0.pth"))
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in src.backbone.body.state_dict().items())


def test_uda_perturb_eval_takes_a_daformer_checkpoint(tmp_path, capsys):
    from uda_perturb.cli import main

    sets = ["--set", "model.backbone=mit_b0", "--set", "model.head=daformer", "--set", "model.head_options={}",
            "--set", "model.backbone_options={}", "--set", "model.num_classes=7", "--set",
            "data.eval={target_test: {name: synthetic, split: test, options: {domain: target, size: [32, 48], "
            "length: 2}}}", "--set", "eval.class_groups={}"]
    torch.save({"state_dict": _mmseg_names(_daformer(7))}, tmp_path / "ckpt.pth")
    assert main(["eval", "synthetic_demo", *sets, "--checkpoint", str(tmp_path / "ckpt.pth")]) == 0
    captured = capsys.readouterr()
    assert "mmseg_uda model" in captured.err and "imagenet normalisation" in captured.err
    assert "mIoU" in captured.out


@pytest.mark.skipif(not CAMVID.is_dir(), reason="reads the CamVid copy at ../shared/data/camvid")
def test_the_cpu_recipe_trains_dacs_mic_and_the_perturbation_on_mit_b0(tmp_path):
    from uda_perturb.config import load_config
    from uda_perturb.engine import Trainer

    cfg = load_config("camvid_day2dusk_daformer_b0", ["train.iters=2", "train.log_every=1", "data.num_workers=0",
                                                      "data.eval={}", f"data.source.root={CAMVID}",
                                                      f"data.target.root={CAMVID}"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.fit()
    trainer.close()
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert all(k in log for k in ('"g/mix"', '"g/mic"', '"g/def_source"', '"g/def_mixed"'))
    assert (tmp_path / "run" / "segmentor.pt").is_file()


@pytest.mark.parametrize("name", sorted(up.list_methods()))
def test_every_method_trains_a_step_on_mit_b0_with_the_daformer_head(name):
    from uda_perturb.methods import build_method

    seg = _daformer(4, seed=5)
    method = build_method(name, seg, [], {"ndf": 8} if name in ("adaptsegnet", "advent", "apoda") else {})
    g = torch.Generator().manual_seed(6)
    source = {"image": torch.randn(2, 3, 32, 48, generator=g), "label": torch.randint(0, 4, (2, 32, 48), generator=g)}
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    result = method.training_step(source, {"image": torch.randn(2, 3, 32, 48, generator=g)})
    assert all(v == v for v in result.generator_losses.values())  # finite losses
    grads = [p.grad for p in seg.parameters() if p.requires_grad]
    assert all(gr is not None for gr in grads[:5]) and seg.head.conv_seg.weight.grad.abs().sum() > 0
    assert any(not torch.equal(before[k], v) for k, v in seg.state_dict().items() if "running_mean" in k)
