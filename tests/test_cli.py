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
    with pytest.raises(SystemExit, match="did you mean 'attacks'"):
        main(["list", "atacks"])


def test_demo_quick_trains_both_methods_and_writes_the_comparison(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| source_only |" in out and "| apoda |" in out and "Target (dusk) test" in out
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert set(data) == {"warm_start", "source_only", "bn_control", "apoda"} and "Read it as" in out
    assert set(data["apoda"]["target_test"]["iou"]) >= {"road", "pole", "person"}


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
