"""Training engine: exact resume, atomic and validated checkpoints, signals, run folders, paper recipes."""
import json
import os
import signal

import pytest
import torch
from helpers import assert_resume_is_bit_exact, method_options, tiny_config

from uda_perturb.config import load_config
from uda_perturb.engine import Trainer, TrainingInterrupted
from uda_perturb.engine.checkpoint import load_checkpoint, save_atomic
from uda_perturb.registry import METHODS


def final_state(trainer):
    return {k: v.clone() for k, v in trainer.method.state_dict().items()}


@pytest.mark.parametrize("method", ["apoda", "adaptsegnet"])
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, method):
    extra = ["train.iters=6", "method.options={ndf: 4}"]
    full = Trainer(tiny_config(method, *extra), tmp_path / "full", progress=False)
    full.fit()
    part = Trainer(tiny_config(method, *extra, "train.stop_at=3"), tmp_path / "part", progress=False)
    part.fit()
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["iteration"] == 3
    resumed = Trainer(tiny_config(method, *extra), tmp_path / "part", resume=True, progress=False)
    assert resumed.iteration == 3
    resumed.fit()
    a, b = final_state(full), final_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    for name in ("segmentor", "discriminators"):
        sa = full.optimizers[name].state_dict()["state"]
        sb = resumed.optimizers[name].state_dict()["state"]
        for i in sa:
            for key in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][key]), torch.as_tensor(sb[i][key]))


@pytest.mark.parametrize("method", METHODS.list())
def test_resume_is_bit_exact_for_every_registered_method_with_rare_class_sampling(tmp_path, method):
    # crops (so rare-class sampling re-draws them) and photometric jitter: every random draw must replay
    extra = ["train.iters=3", method_options(method), "data.source.transforms.crop=[32, 48]",
             "data.source.transforms.scale=[1.0, 1.5]", "data.source.transforms.photometric=true",
             "data.rare_class_sampling={temperature: 0.5, min_pixels: 4}"]
    assert_resume_is_bit_exact(tmp_path, method, extra)


def test_gradient_accumulation_and_metrics_log(tmp_path):
    t = Trainer(tiny_config("minent", "train.iters=2", "train.accumulate=2"), tmp_path / "r", progress=False)
    t.fit()
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 2] and "g/ent_main" in lines[0] and lines[1]["lr"] < lines[0]["lr"]
    assert (tmp_path / "r" / "config.yaml").is_file() and (tmp_path / "r" / "segmentor.pt").is_file()
    assert json.loads((tmp_path / "r" / "results.json").read_text())["final_checkpoint"] is True


def test_run_folder_never_silently_overwritten(tmp_path):
    Trainer(tiny_config("source_only", "train.iters=1"), tmp_path / "r", progress=False).fit()
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        Trainer(tiny_config("source_only", "train.iters=1"), tmp_path / "r", progress=False)
    Trainer(tiny_config("source_only", "train.iters=1"), tmp_path / "r", overwrite=True, progress=False)


def test_checkpoint_from_other_config_or_truncated_is_refused(tmp_path):
    Trainer(tiny_config("source_only", "train.iters=1"), tmp_path / "r", progress=False).fit()
    with pytest.raises(ValueError, match="another config: train.lr: checkpoint 0.01 vs config 0.5"):
        Trainer(tiny_config("source_only", "train.iters=2", "train.lr=0.5"), tmp_path / "r", resume=True,
                progress=False)
    ckpt = tmp_path / "r" / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(ckpt)
    torch.save({"model": {}}, ckpt)
    with pytest.raises(ValueError, match="not written by uda_perturb"):
        load_checkpoint(ckpt)


def test_atomic_save_leaves_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"a": torch.ones(1)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_atomic({"a": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_sigterm_writes_checkpoint_and_stops(tmp_path):
    trainer = Trainer(tiny_config("source_only", "train.iters=10"), tmp_path / "r", progress=False)
    original = trainer.train_step
    calls = []

    def step(*a):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*a)

    trainer.train_step = step
    with pytest.raises(TrainingInterrupted, match="after iteration 2"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["iteration"] == 2
    assert signal.getsignal(signal.SIGTERM) is not trainer._on_signal  # handler restored


@pytest.mark.parametrize("recipe,classes", [("gta5_cityscapes", 19), ("synthia_cityscapes", 16)])
def test_paper_recipes_one_step_at_tiny_size(tmp_path, recipe, classes):
    synth = "{{name: synthetic, split: train, options: {{domain: {d}, size: [33, 41], length: 2}}}}"
    cfg = load_config(recipe, [f"data.source={synth.format(d='source')}", f"data.target={synth.format(d='target')}",
                               "data.eval={}", "train.iters=1", "data.num_workers=0", "train.checkpoint_every=0"])
    assert cfg.model.backbone == "resnet101" and cfg.method.name == "apoda" and cfg.model.num_classes == classes
    t = Trainer(cfg, tmp_path / recipe, progress=False)
    t.fit()
    line = json.loads((tmp_path / recipe / "metrics.jsonl").read_text().splitlines()[0])
    assert all(v == v for v in line.values() if isinstance(v, float))  # no NaN
    assert {"g/def_source", "g/def_target", "g/adv_aux", "d/d_main"} <= set(line)


def test_bf16_autocast_step_on_cpu(tmp_path):
    t = Trainer(tiny_config("apoda", "train.iters=1", "train.precision=bf16", "method.options={ndf: 4}"),
                tmp_path / "r", progress=False)
    t.fit()
    line = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["perturb/source_moved"] == 1.0 and line["g/def_source"] == line["g/def_source"]


def test_trainer_hands_target_batches_to_the_target_bn_control(tmp_path):
    plain = Trainer(tiny_config("source_only", "train.iters=1"), tmp_path / "a", progress=False)
    plain.fit()
    control = Trainer(tiny_config("source_only", "train.iters=1", "method.options={target_bn_stats: true}"),
                      tmp_path / "b", progress=False)
    control.fit()
    key = "segmentor.backbone.stem.1.running_mean"
    assert not torch.equal(plain.method.state_dict()[key], control.method.state_dict()[key])


def test_channels_last_training_gives_the_same_weights(tmp_path):
    runs = {}
    for cl in (False, True):
        t = Trainer(tiny_config("adaptsegnet", "train.iters=2", "method.options={ndf: 4}",
                                f"train.channels_last={str(cl).lower()}"), tmp_path / str(cl), progress=False)
        t.fit()
        runs[cl] = final_state(t)
    assert runs[True]["segmentor.backbone.stem.0.weight"].is_contiguous(memory_format=torch.channels_last)
    for k, v in runs[False].items():
        torch.testing.assert_close(runs[True][k], v, atol=1e-5, rtol=1e-4, msg=f"{k} differs under channels_last")
