"""What a user meets on a mistake: option typos with key path and suggestion, wrong value types, float
overrides, one-line CLI errors (exit 2, --debug for the traceback), checkpoints decided by content with the
file named, YAML errors naming the file, a missing data root naming the key to set."""
import pickle
import re

import pytest
import torch
from helpers import tiny_config

from uda_perturb.cli import main
from uda_perturb.config import ConfigError, load_config
from uda_perturb.engine import Trainer
from uda_perturb.engine.checkpoint import load_segmentor_state
from uda_perturb.errors import CheckpointError


@pytest.mark.parametrize("override,message", [
    ("method.options={eps: 0.1}", r"unknown option 'method.options.eps'; method 'apoda' takes: .*perturbation"),
    ("method.options={perturbation: {epss: 0.1}}", r"'method.options.perturbation.epss' \(did you mean "
                                                   r"'method.options.perturbation.eps'\?\)"),
    ("method.options={perturbation: {eps: fast}}", r"'method.options.perturbation.eps' expects float, got str"),
    ("method.options={ndf: '64'}", r"'method.options.ndf' expects int, got str"),
    ("model.backbone_options={widht: 8}", r"did you mean 'model.backbone_options.width'"),
    ("model.head_options={dilation: [1, 2]}", r"did you mean 'model.head_options.dilations'"),
    ("method.addons=[{name: perturbation, stepz: 3}]", r"did you mean 'method.addons\[0\].steps'"),
    ("method.addons=[{name: perturbation, attacks: [random]}]", r"unknown option 'method.addons\[0\].attacks'"),
    ("method.name=apod", r"'method.name': unknown method 'apod'. Did you mean 'apoda'"),
])
def test_option_mappings_are_checked_against_signatures(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("synthetic_demo", ["method.name=apoda", override])


def test_set_parses_exponent_floats_and_suggestions_are_quoted_whole():
    cfg = load_config("synthetic_demo", ["train.lr=1e-3", "train.d_lr=5E-4", "train.weight_decay=-2.5e-1"])
    assert (cfg.train.lr, cfg.train.d_lr, cfg.train.weight_decay) == (1e-3, 5e-4, -0.25)
    with pytest.raises(ConfigError, match=r"\(did you mean 'train.iters'\?\)"):
        load_config("synthetic_demo", ["train.iter=3"])


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {backbone: lite\n")
    with pytest.raises(ConfigError, match=f"config {bad}: invalid YAML"):
        load_config(bad)


def test_cli_prints_user_errors_on_one_line_and_exits_2(tmp_path, capsys):
    assert main(["train", "synthetic_demo", "--set", "train.iter=3", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uda-perturb: error: unknown config key 'train.iter'") and err.count("\n") == 1
    with pytest.raises(ConfigError):
        main(["--debug", "train", "synthetic_demo", "--set", "train.iter=3", "--run-dir", str(tmp_path / "r")])


def test_missing_data_root_names_the_key_to_set(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipe's relative root does not resolve from here
    assert main(["train", "camvid_day2dusk", "--set", "train.iters=1", "--run-dir", "r", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "data.source.root is '../shared/data/camvid'" in err and "--set data.source.root=PATH" in err


def test_checkpoints_are_read_by_content_and_failures_name_the_file(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(tiny_config("source_only", "train.iters=1"), run, progress=False).fit()
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes((run / "segmentor.pt").read_bytes())
    ckpt_renamed = tmp_path / "segmentor.pt"  # a trainer checkpoint under a segmentor's name
    ckpt_renamed.write_bytes((run / "checkpoint.pt").read_bytes())
    a, b = load_segmentor_state(renamed), load_segmentor_state(ckpt_renamed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(renamed.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"checkpoint {truncated} is truncated"):
        load_segmentor_state(truncated)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"w": torch.ones(1), "obj": pickle.PickleError("x")}, unsafe)
    with pytest.raises(CheckpointError, match="refused for safety") as info:
        load_segmentor_state(unsafe)
    assert "weights_only=False" not in str(info.value)
    sets = ["--set", "train.iters=1", "--set", "model.backbone_options={width: 8}", "--set", "model.head=conv1x1",
            "--set", "model.head_options={}", "--set", "data.eval.target_test.options.length=2",
            "--set", "data.eval.source_test.options.length=2"]
    assert main(["eval", "synthetic_demo", *sets, "--checkpoint", str(renamed)]) == 0
    capsys.readouterr()
    assert main(["eval", "synthetic_demo", *sets, "--checkpoint", str(truncated)]) == 2
    assert str(truncated) in capsys.readouterr().err


def test_an_option_value_refused_is_one_line_exit_2_and_leaves_no_run_folder(tmp_path, capsys):
    for sets, message in (
            (["method.name=apoda", "method.options.perturbation.combine=summ"],
             "uda-perturb: error: config key 'method.options.perturbation': combine must be one of ('balanced', "
             "'sum', 'separate'), got 'summ'"),
            (["method.name=source_only", "method.addons=[{name: perturbation, norm: l3}]"],
             "uda-perturb: error: config key 'method.addons[0]': norm must be one of ('l2', 'linf'), got 'l3'"),
            (["method.name=dacs", "method.options.teacher_bn=stord"],
             "uda-perturb: error: method 'dacs' refused its settings (method.options, method.addons): teacher "
             "BatchNorm mode must be one of ('batch', 'stored'), got 'stord'")):
        run = tmp_path / "r"
        args = ["train", "synthetic_demo", "--run-dir", str(run), "--no-progress"]
        assert main(args + [x for s in sets for x in ("--set", s)]) == 2
        assert capsys.readouterr().err.strip() == message
        assert not run.exists()


def test_eval_takes_a_run_folder_finished_or_still_going_and_says_which_file(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(tiny_config("source_only", "train.iters=1"), run, progress=False).fit()
    sets = ["--set", "model.backbone_options={width: 8}", "--set", "model.head=conv1x1", "--set",
            "model.head_options={}", "--set", "data.eval.target_test.options.length=2", "--set",
            "data.eval.source_test.options.length=2"]
    assert main(["eval", "synthetic_demo", *sets, "--checkpoint", str(run)]) == 0
    finished = capsys.readouterr()
    assert f"using {run / 'segmentor.pt'} (the finished run's weights)" in finished.err
    (run / "segmentor.pt").unlink()  # as a run still going has it
    assert main(["eval", "synthetic_demo", *sets, "--checkpoint", str(run)]) == 0
    going = capsys.readouterr()
    assert f"using {run / 'checkpoint.pt'} (the run's latest save" in going.err
    # the same weights (one iteration, saved in both): the same scores; only the printed eval time may differ
    untimed = lambda text: re.sub(r", \d+\.\d+ s", "", text)  # noqa: E731
    assert untimed(going.out) == untimed(finished.out) and "mIoU" in finished.out
    (run / "checkpoint.pt").unlink()
    assert main(["eval", "synthetic_demo", *sets, "--checkpoint", str(run)]) == 2
    assert "holds neither segmentor.pt (a finished run's weights) nor checkpoint.pt" in capsys.readouterr().err
