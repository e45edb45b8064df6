import json

import pytest

from uda_perturb.cli import main


def test_list_prints_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("backbones", "attacks", "defenses", "methods", "datasets", "addons", "recipes"):
        assert f"{kind}:" in out
    assert "apoda" in out and "perturbation" in out and "camvid_day2dusk" in out
    assert main(["list", "backbones", "--include", "resnet1*"]) == 0
    assert capsys.readouterr().out.strip() == "backbones: resnet101, resnet152, resnet18"
    assert main(["list", "atacks"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uda-perturb: error: unknown kind 'atacks'; did you mean 'attacks'?") and "recipes" in err


def test_demo_quick_trains_every_method_says_its_threads_and_writes_the_comparison(tmp_path, capsys):
    import torch

    from uda_perturb import cli, demo

    threads = torch.get_num_threads()
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("demo: 1 torch threads (set so that its numbers are the same on every machine")
    assert torch.get_num_threads() == threads  # put back
    assert "| source_only |" in out and "| apoda |" in out and "Target (dusk) test" in out
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert set(data) == {"0"} and set(data["0"]) == {"warm_start", "source_only", "bn_control", "apoda"}
    assert set(data["0"]["apoda"]["target_test"]["iou"]) >= {"road", "pole", "person"}
    assert "One seed measures no spread" in out and "Read it as" in out
    assert (cli.DEMO_SEEDS, cli.DEMO_THREADS) == (demo.DEMO_SEEDS, demo.DEMO_THREADS)


def test_train_eval_predict_roundtrip(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    sets = ["--set", "train.iters=2", "--set", "model.backbone_options={width: 8}", "--set",
            "data.eval.target_test.options.length=4", "--set", "data.eval.source_test.options.length=4",
            "--set", "method.name=minent"]
    run = tmp_path / "run"
    assert main(["train", "synthetic_demo", *sets, "--run-dir", str(run), "--no-progress"]) == 0
    assert "target_test @ iteration 2" in capsys.readouterr().out
    assert main(["eval", "synthetic_demo", *sets, "--checkpoint", str(run / "checkpoint.pt")]) == 0
    assert "| road |" in capsys.readouterr().out
    img = tmp_path / "x.png"
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(img)
    assert main(["predict", "synthetic_demo", *sets, "--checkpoint", str(run / "segmentor.pt"),
                 "--out", str(tmp_path / "pred"), str(img)]) == 0
    pred = np.asarray(Image.open(tmp_path / "pred" / "x_pred.png"))
    assert pred.shape == (40, 60, 3)
    assert (tmp_path / "pred" / "x_overlay.png").is_file()


def _tiny_run(tmp_path, *more):
    sets = ["--set", "train.iters=4", "--set", "train.log_every=2", "--set", "model.backbone_options={width: 8}",
            "--set", "data.eval.target_test.options.length=3", "--set", "data.eval.source_test.options.length=3",
            *more]
    run = tmp_path / "run"
    assert main(["train", "synthetic_demo", *sets, "--run-dir", str(run)]) == 0
    return sets, run


def test_train_into_a_log_prints_plain_progress_lines_and_eval_lines(tmp_path, capsys):
    _tiny_run(tmp_path)
    out = capsys.readouterr()
    lines = [ln for ln in out.out.splitlines() if ln.startswith("iter ")]
    assert [ln.split()[1] for ln in lines] == ["2/4", "4/4"]
    assert "loss " in lines[0] and "s/it " in lines[0] and "eta " in lines[0]
    assert "\r" not in out.out + out.err  # no tqdm stream in a log
    assert "eval target_test: 3 images, mIoU" in out.out


def test_predict_expands_folders_and_refuses_other_files(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    sets, run = _tiny_run(tmp_path)
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("b.png", "a.jpg"):
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    capsys.readouterr()
    assert main(["predict", "synthetic_demo", *sets, "--checkpoint", str(run / "segmentor.pt"), "--out",
                 str(tmp_path / "pred"), str(folder)]) == 0
    done = [ln.split(" -> ")[0] for ln in capsys.readouterr().out.splitlines() if " -> " in ln]
    assert done == [str(folder / "a.jpg"), str(folder / "b.png")]  # sorted, the text file skipped
    assert main(["predict", "synthetic_demo", *sets, "--checkpoint", str(run / "segmentor.pt"),
                 str(folder / "notes.txt")]) == 2
    assert "notes.txt is not an image file" in capsys.readouterr().err


def test_checkpoint_errors_name_the_mismatch_and_the_fix(tmp_path, capsys):
    sets, run = _tiny_run(tmp_path)
    capsys.readouterr()
    other = ["--set", "model.num_classes=5", "--set", "model.backbone_options={width: 8}"]
    assert main(["eval", "synthetic_demo", *other, "--checkpoint", str(run / "segmentor.pt")]) == 2
    err = capsys.readouterr().err
    assert "it predicts 9 classes, the recipe 5" in err and "tensors differ in shape" in err
    assert f"evaluate it with its run's own recipe: {run.resolve() / 'config.yaml'}" in err
    readme = tmp_path / "README.md"
    readme.write_text("# not a checkpoint")
    assert main(["eval", "synthetic_demo", *sets, "--checkpoint", str(readme)]) == 2
    assert "is not a torch file" in capsys.readouterr().err


def test_study_help_names_the_cli_command_and_its_actions(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: uda-perturb study") and "{run,status,report}" in out
    assert main(["list", "studies"]) == 0
    assert "gta5_cityscapes_apoda" in capsys.readouterr().out
    assert main(["study", "run", "no_such_study"]) == 2
    assert "study 'no_such_study' not found" in capsys.readouterr().err


def test_resume_with_more_iterations_says_so(tmp_path, capsys):
    sets, run = _tiny_run(tmp_path)
    capsys.readouterr()
    more = [a if a != "train.iters=4" else "train.iters=6" for a in sets]
    assert main(["train", "synthetic_demo", *more, "--run-dir", str(run), "--resume", "--no-progress"]) == 0
    assert "train.iters changed from 4 to 6" in capsys.readouterr().err
