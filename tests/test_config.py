import pytest

from uda_perturb.config import ConfigError, apply_overrides, build_config, list_recipes, load_config, load_raw


def test_packaged_recipes_load_and_compose():
    assert {"synthetic_demo", "camvid_day2dusk", "gta5_cityscapes", "synthia_cityscapes"} <= set(list_recipes())
    cfg = load_config("gta5_cityscapes")
    assert cfg.model.backbone == "resnet101" and cfg.model.multi_level  # from base: deeplabv2_r101
    assert cfg.train.stop_at == 120000 and cfg.model.num_classes == 19
    assert cfg.data.source.transforms.size == [720, 1280] and cfg.eval.size == [512, 1024]


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.iter' \(did you mean train.'iters'\?\)|"
                                          r"unknown config key 'train.iter'.*iters"):
        build_config({"train": {"iter": 5}})
    with pytest.raises(ConfigError, match="unknown config key 'modle'.*model"):
        build_config({"modle": {}})


def test_wrong_types_name_the_key():
    with pytest.raises(ConfigError, match="'train.lr' expects float, got str"):
        build_config({"train": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="'train.iters' expects int, got bool"):
        build_config({"train": {"iters": True}})
    with pytest.raises(ConfigError, match="precision"):
        build_config({"train": {"precision": "fp8"}})
    assert build_config({"train": {"lr": 1}}).train.lr == 1.0  # int accepted where float is expected


def test_dotted_overrides_parse_yaml_values():
    data = apply_overrides(load_raw("synthetic_demo"), ["train.iters=7", "method.addons=[perturbation]",
                                                        "data.source.options.size=[8, 8]"])
    cfg = build_config(data)
    assert cfg.train.iters == 7 and cfg.method.addons == ["perturbation"]
    assert cfg.data.source.options["size"] == [8, 8] and cfg.data.source.options["domain"] == "source"
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.iters"])


def test_missing_recipe_suggests():
    with pytest.raises(FileNotFoundError, match="Did you mean synthetic_demo"):
        load_config("synthetic_dem")


def test_the_v4_recipe_builds_the_network_v4s_comparison_trained():
    from uda_perturb.study import load_study

    shipped = load_config("camvid_rendered2real_v4")
    study = load_study("camvid_rendered_v4")
    overridden = load_config(study.recipe, study.overrides)
    assert shipped.model == overridden.model and shipped.model.backbone_options["output_stride"] == 16
    assert shipped.data == overridden.data and shipped.train == overridden.train
