"""camvid_rendered: images made from label maps alone, deterministic per (seed, frame, style), real labels, and the
camvid_rendered2real recipe's sequences kept apart."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import uda_perturb as up
from uda_perturb.config import load_config
from uda_perturb.data.label_renderer import BASE, CAR, FENCE, POLE, ROAD, SKY, render_label_map, style_palette
from uda_perturb.errors import DataError

H, W = 36, 48


def scene() -> np.ndarray:
    """Sky on top, road below, two separate cars and an Unlabelled corner (raw CamVid ids)."""
    lab = np.full((H, W), SKY, np.uint8)
    lab[H // 2:] = ROAD
    lab[24:30, 4:14] = CAR
    lab[24:30, 30:42] = CAR
    lab[0:3, 0:3] = 11
    return lab


def write_fixture(root, photo_value: int = 100) -> None:
    """A two-frame CamVid copy in the SegNet layout (photos flat grey of ``photo_value``)."""
    lines = []
    for name in ("0016E5_00390.png", "0016E5_00420.png"):
        (root / "train").mkdir(parents=True, exist_ok=True)
        (root / "trainannot").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), photo_value, np.uint8)).save(root / "train" / name)
        Image.fromarray(scene()).save(root / "trainannot" / name)
        lines.append(f"train/{name} trainannot/{name}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")


def test_same_seed_frame_and_style_give_the_same_image_and_others_differ():
    lab = scene()
    pal = style_palette(np.random.default_rng(0))
    a = render_label_map(lab, np.random.default_rng([0, 1, 0]), pal)
    b = render_label_map(lab, np.random.default_rng([0, 1, 0]), pal)
    c = render_label_map(lab, np.random.default_rng([0, 2, 0]), pal)
    assert a.shape == (H, W, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_appearance_follows_the_classes():
    """Sky is bluer than road (its base colour), and the two cars, separate components, get their own paint (a
    paint from a list and a jitter: over ten images they almost always differ; a per-class colour never would)."""
    lab = scene()
    img = render_label_map(lab, np.random.default_rng(3), BASE.copy())
    inner = np.zeros_like(lab, bool)
    inner[2:-2, 2:-2] = True  # away from the blur at class borders
    sky, road = (lab == SKY) & inner, (lab == ROAD) & inner
    blue_minus_red = img[..., 2] - img[..., 0]
    assert blue_minus_red[sky].mean() > blue_minus_red[road].mean() + 0.1
    differ = 0
    for seed in range(10):
        img = render_label_map(lab, np.random.default_rng(seed), BASE.copy())
        car_a, car_b = img[26:28, 6:12].reshape(-1, 3).mean(0), img[26:28, 33:39].reshape(-1, 3).mean(0)
        differ += int(np.abs(car_a - car_b).max() > 0.02)
    assert differ >= 7


def test_style_palette_scales_each_channel_by_at_most_20_percent():
    pal = style_palette(np.random.default_rng(5))
    ratio = pal / BASE
    assert pal.shape == BASE.shape and np.all(ratio >= 0.8 - 1e-6) and np.all(ratio <= 1.2 + 1e-6)
    assert not np.allclose(pal, style_palette(np.random.default_rng(6)))


def test_dataset_renders_from_labels_alone_with_real_labels(tmp_path):
    write_fixture(tmp_path / "a", photo_value=20)
    write_fixture(tmp_path / "b", photo_value=230)  # other photo pixels, same label maps
    a = up.DATASETS.build("camvid_rendered", root=str(tmp_path / "a"), split="train", styles=3)
    b = up.DATASETS.build("camvid_rendered", root=str(tmp_path / "b"), split="train", styles=3)
    assert len(a) == 6  # 2 frames x 3 styles; item i = frame i % 2 in style i // 2
    assert [a[i]["name"] for i in range(6)] == [f"0016E5_00{f}_style{s}" for s in range(3) for f in ("390", "420")]
    for i in range(6):
        assert torch.equal(a[i]["image"], b[i]["image"])  # no photo pixel used
    assert not torch.equal(a[0]["image"], a[2]["image"])  # another style
    assert not torch.equal(a[0]["image"], a[1]["image"])  # another frame (same label map): another seed
    label = a[3]["label"]
    expected = torch.from_numpy(scene().astype(np.int64))
    expected[expected == 11] = 255
    assert torch.equal(label, expected) and torch.equal(a.read_label(3), expected)
    assert a[0]["image"].shape == (3, H, W)
    other_seed = up.DATASETS.build("camvid_rendered", root=str(tmp_path / "a"), split="train", seed=1)
    assert not torch.equal(other_seed[0]["image"], a[0]["image"])


def test_images_are_rendered_at_full_resolution_as_8_bit_from_the_item_seed(tmp_path):
    write_fixture(tmp_path)
    full = up.DATASETS.build("camvid_rendered", root=str(tmp_path), split="train")
    half = up.DATASETS.build("camvid_rendered", root=str(tmp_path), split="train", render_stride=2)
    direct = render_label_map(scene(), np.random.default_rng([0, __import__("zlib").crc32(b"0016E5_00390.png"), 0]))
    expected = torch.from_numpy(np.round(direct * 255) / 255).permute(2, 0, 1).float()
    torch.testing.assert_close(full.render(0), expected, atol=1e-6, rtol=0)
    assert full.render(0).shape == half.render(0).shape == (3, H, W) and not torch.equal(half.render(0), full.render(0))
    assert torch.equal(full[0]["image"], full[0]["image"])  # the cached image is the same image


def test_a_one_pixel_pole_survives_full_resolution_rendering():
    """Rendering every other label pixel (the earlier default) loses a pole on an odd column; rendering every
    pixel keeps it."""
    lab = np.full((H, W), ROAD, np.uint8)
    lab[:, 13] = POLE
    contrast = []
    for stride in (1, 2):
        seen = []
        for seed in range(6):  # the pole's colour against the road's varies with the draws: average
            img = render_label_map(lab[::stride, ::stride], np.random.default_rng(seed))
            if stride == 2:
                img = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=(H, W),
                                                      mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
            cols = img.mean(axis=(0, 2))
            seen.append(abs(cols[13] - (cols[10] + cols[16]) / 2))
        contrast.append(float(np.mean(seen)))
    assert contrast[0] > 0.02 and contrast[1] < contrast[0] / 3


def test_renders_are_identical_across_thread_counts(tmp_path):
    write_fixture(tmp_path)
    images = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ds = up.DATASETS.build("camvid_rendered", root=str(tmp_path), split="train", styles=2)
            images.append([ds.render(i) for i in range(len(ds))])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*images))


def test_each_image_draws_its_own_palette_and_texture_phases():
    """Class colours differ between two renders of one label map in one style (a palette per image), and a
    fence's slats sit at other columns (a phase per instance, not fixed screen positions)."""
    lab = np.full((H, W), SKY, np.uint8)
    lab[H // 2:] = FENCE
    inner_sky = (slice(2, H // 2 - 2), slice(2, W - 2))
    fence_rows = slice(H // 2 + 2, H - 2)
    skies, profiles = [], []
    for seed in range(6):
        img = render_label_map(lab, np.random.default_rng(seed))
        skies.append(img[inner_sky].reshape(-1, 3).mean(0))
        p = img[fence_rows].mean(axis=(0, 2))
        profiles.append(p - p.mean())
    assert np.ptp(np.array(skies), axis=0).max() > 0.03
    corr = [np.corrcoef(profiles[0], q)[0, 1] for q in profiles[1:]]
    assert min(corr) < 0.5  # fixed slat positions correlate near 1 whatever the colours


def test_bad_options_and_indices_are_refused(tmp_path):
    write_fixture(tmp_path)
    with pytest.raises(DataError, match="styles"):
        up.DATASETS.build("camvid_rendered", root=str(tmp_path), split="train", styles=0)
    with pytest.raises(DataError, match="render_stride"):
        up.DATASETS.build("camvid_rendered", root=str(tmp_path), split="train", render_stride=0)
    with pytest.raises(DataError, match=r"exclude_frames must be \[first, last\]"):
        up.DATASETS.build("camvid_rendered", root=str(tmp_path), split="train", exclude_frames=[500, 400])
    ds = up.DATASETS.build("camvid_rendered", root=str(tmp_path), split="train", styles=2)
    with pytest.raises(IndexError):
        ds[4]


def test_rendered2real_recipe_keeps_rendered_and_real_sequences_apart_and_holds_source_test_out(camvid_root):
    from uda_perturb.data.camvid import frame_number
    from uda_perturb.engine.loaders import build_dataset

    cfg = load_config("camvid_rendered2real", [f"data.source.root={camvid_root}", f"data.target.root={camvid_root}",
                                               f"data.eval.real_test.root={camvid_root}",
                                               f"data.eval.source_test.root={camvid_root}"])
    src, tgt = cfg.data.source, cfg.data.target
    assert src.name == "camvid_rendered" and src.options["sequences"] == ["0016E5"]
    assert tgt.name == "camvid" and tgt.options["sequences"] == ["0006R0"] and tgt.options["labelled"] is False
    source, target = build_dataset(src, train=True), build_dataset(tgt, train=True)
    test, held = build_dataset(cfg.data.eval["real_test"], False), build_dataset(cfg.data.eval["source_test"], False)
    assert len(target) == 101 and len(test) == 171 and len(held) == 101
    frames = lambda ds: {(p.name.split("_")[0], frame_number(p.name)) for p in ds.frames.images}  # noqa: E731
    clip = frames(held)
    assert {f for _, f in clip} == set(range(7959, 8160, 2))  # the val clip
    # the source trains on 0016E5 outside the clip and 90 frames on either side of it
    assert len(source) == 2 * 200 and not any(7869 <= f <= 8249 for _, f in frames(source))
    assert min(abs(f - g) for _, f in frames(source) for _, g in clip) > 60
    seqs = lambda names: {n.split("_")[0] for n in names}  # noqa: E731
    real = seqs(p.name for p in target.images) | seqs(p.name for p in test.images)
    assert seqs(p.name for p in source.frames.labels) == {"0016E5"} and real == {"0006R0", "Seq05VD"}
    assert cfg.data.eval["real_test"].options == {"sequences": ["Seq05VD"]}  # dusk test frames never count


def test_the_gap_study_trains_the_same_recipe_on_renderings_and_on_the_photos(tmp_path):
    """The two arms of the gap differ only in the source dataset: rendered 0016E5 vs the same frames' photos;
    a protocol's network (--set) reaches both."""
    from uda_perturb.config import to_dict
    from uda_perturb.engine.checkpoint import flatten
    from uda_perturb.study import load_study
    from uda_perturb.study.plan import make_plan

    study = load_study("setup_camvid_rendered_gap")
    plan = make_plan(study, tmp_path, seeds=[0, 1], extra=["model.backbone_options.output_stride=16"])
    assert [r.seed for r in plan.adaptations()] == [0, 0, 1, 1] and plan.warm_starts() == []
    assert plan.adaptation("real", False, 1).run_dir == tmp_path / "setup_camvid_rendered_gap" / "real_plain_s1"
    rendered, real = (flatten(to_dict(load_config(study.recipe, plan.adaptation(k, False, 0).overrides)))
                      for k in ("rendered", "real"))
    differ = sorted(k for k in set(rendered) | set(real) if rendered.get(k) != real.get(k))
    assert all(k.startswith("data.source.") for k in differ) and "data.source.name" in differ
    assert real["data.source.name"] == "camvid" and real["data.source.options.sequences"] == ["0016E5"]
    assert real["data.source.split"] == rendered["data.source.split"] == ["train", "val"]
    assert rendered["train.iters"] == real["train.iters"] == 600
    assert rendered["model.backbone_options.output_stride"] == real["model.backbone_options.output_stride"] == 16


def test_a_gap_study_report_is_a_gap_record(tmp_path):
    from uda_perturb.bench.gap import read_gap

    res = {k: {"seeds": 1, "real_test": {"miou": {"mean": m, "std": 0.0, "n": 1}}} for k, m in (("real", 30.5),
                                                                                              ("rendered", 12.0))}
    (tmp_path / "gap.json").write_text(json.dumps({"results": res}))
    assert read_gap(tmp_path / "gap.json") == pytest.approx(18.5)
