"""Readers on fixture folders in each dataset's real layout, built here with tiny PNGs."""
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import uda_perturb as up
from uda_perturb.data import build_transforms, pixel_counts
from uda_perturb.data.synthetic import SYNTHETIC_CLASSES, SyntheticRoadScenes
from uda_perturb.errors import DataError


def save_rgb(path, h=4, w=6, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def save_label(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8), mode="L").save(path)


def save_png16_rgb(path, arr):
    """Minimal 16-bit RGB PNG writer (PIL cannot write 48-bit PNGs)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_gta5_maps_cityscapes_label_ids(tmp_path):
    save_rgb(tmp_path / "images" / "00001.png")
    lab = np.full((4, 6), 7)
    lab[0, 0], lab[0, 1], lab[0, 2], lab[0, 3] = 26, 0, 33, 24  # car, unlabelled, bicycle, person
    save_label(tmp_path / "labels" / "00001.png", lab)
    ds = up.DATASETS.build("gta5", root=str(tmp_path))
    item = ds[0]
    assert item["label"][0, :4].tolist() == [13, 255, 18, 11] and item["label"][1, 0] == 0
    assert item["image"].shape == (3, 4, 6) and ds.info.num_classes == 19


def test_label_value_outside_map_names_the_file(tmp_path):
    save_rgb(tmp_path / "images" / "a.png")
    save_label(tmp_path / "labels" / "a.png", np.full((4, 6), 40))
    ds = up.DATASETS.build("gta5", root=str(tmp_path), strict_labels=True)
    with pytest.raises(ValueError, match=r"labels/a.png: values \[40\]"):
        ds[0]


def test_missing_folder_and_missing_label_and_truncated_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="gta5 images: folder not found"):
        up.DATASETS.build("gta5", root=str(tmp_path / "nowhere"))
    save_rgb(tmp_path / "images" / "a.png")
    (tmp_path / "labels").mkdir()
    with pytest.raises(FileNotFoundError, match="missing file .*labels/a.png"):
        up.DATASETS.build("gta5", root=str(tmp_path))
    save_label(tmp_path / "labels" / "a.png", np.full((4, 6), 7))
    data = (tmp_path / "images" / "a.png").read_bytes()
    (tmp_path / "images" / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="cannot read image .*a.png"):
        up.DATASETS.build("gta5", root=str(tmp_path))[0]


def test_cityscapes_layout_and_class_modes(tmp_path):
    save_rgb(tmp_path / "leftImg8bit" / "val" / "ulm" / "ulm_000000_000019_leftImg8bit.png")
    lab = np.full((4, 6), 22)  # terrain
    lab[0, 0] = 27  # truck
    lab[0, 1] = 12  # wall
    lab[0, 2] = 33  # bicycle
    save_label(tmp_path / "gtFine" / "val" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png", lab)
    c19 = up.DATASETS.build("cityscapes", root=str(tmp_path), split="val")[0]["label"]
    c16 = up.DATASETS.build("cityscapes", root=str(tmp_path), split="val", num_classes=16)[0]["label"]
    c13 = up.DATASETS.build("cityscapes", root=str(tmp_path), split="val", num_classes=13)[0]["label"]
    assert c19[0, :3].tolist() == [14, 3, 18] and c19[1, 1] == 9
    assert c16[0, :3].tolist() == [255, 3, 15] and c16[1, 1] == 255
    assert c13[0, :3].tolist() == [255, 255, 12]
    unlabelled = up.DATASETS.build("cityscapes", root=str(tmp_path), split="val", labelled=False)[0]
    assert bool((unlabelled["label"] == 255).all())


def test_synthia_reads_16bit_channel0_and_drops_unmapped(tmp_path):
    save_rgb(tmp_path / "RGB" / "0000001.png")
    arr = np.zeros((4, 6, 3), np.int64)
    arr[..., 0] = 3  # road
    arr[0, 0, 0], arr[0, 1, 0], arr[0, 2, 0], arr[0, 3, 0] = 16, 8, 21, 7  # terrain, car, wall, pole
    arr[..., 1] = 1000  # instance ids in channel 1 must be ignored
    save_png16_rgb(tmp_path / "GT" / "LABELS" / "0000001.png", arr)
    l16 = up.DATASETS.build("synthia", root=str(tmp_path))[0]["label"]
    l13 = up.DATASETS.build("synthia", root=str(tmp_path), num_classes=13)[0]["label"]
    assert l16[0, :4].tolist() == [255, 12, 3, 5] and l16[1, 1] == 0  # terrain not among the 16
    assert l13[0, :4].tolist() == [255, 9, 255, 255]


def test_camvid_fixture_sequences_and_ignore(tmp_path):
    for split, names in {"train": ["0001TP_1.png", "0006R0_2.png"], "test": ["Seq05VD_3.png"]}.items():
        lines = []
        for n in names:
            save_rgb(tmp_path / split / n)
            save_label(tmp_path / f"{split}annot" / n, np.array([[11, 3, 10], [0, 1, 2]]).repeat(2, 0).repeat(2, 1))
            lines.append(f"{split}/{n} {split}annot/{n}")
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    dusk = up.DATASETS.build("camvid", root=str(tmp_path), split="train", sequences=["0001TP"])
    assert len(dusk) == 1 and dusk[0]["label"][0, 0] == 255 and dusk[0]["label"][0, 2] == 3
    both = up.DATASETS.build("camvid", root=str(tmp_path), split=["train", "test"])
    assert len(both) == 3
    with pytest.raises(FileNotFoundError, match="no frames"):
        up.DATASETS.build("camvid", root=str(tmp_path), split="train", sequences=["XYZ"])


def test_real_camvid_counts_follow_its_readme(camvid_root):
    day = up.DATASETS.build("camvid", root=str(camvid_root), split=["train", "val"], sequences=["0006R0", "0016E5"])
    dusk = up.DATASETS.build("camvid", root=str(camvid_root), split="train", sequences=["0001TP"])
    test = up.DATASETS.build("camvid", root=str(camvid_root), split="test")
    assert (len(day), len(dusk), len(test)) == (406, 62, 171)
    item = dusk[0]
    assert item["image"].shape == (3, 360, 480) and item["label"].max() <= 255
    assert set(item["label"].unique().tolist()) <= set(range(11)) | {255}


def test_transforms_keep_labels_nearest_and_aligned():
    torch.manual_seed(0)
    image = torch.rand(3, 20, 30)
    label = torch.randint(0, 5, (20, 30))
    label[:2] = 255
    t = build_transforms(size=(10, 15), crop=(8, 12), scale=(0.8, 1.5), flip=True, photometric=True)
    img, lab = t(image, label)
    assert img.shape == (3, 8, 12) and lab.shape == (8, 12)
    assert set(lab.unique().tolist()) <= set(range(5)) | {255}  # nearest only: no new label values
    caffe = build_transforms(normalize="caffe")(torch.ones(3, 2, 2), None)[0]
    assert torch.allclose(caffe[:, 0, 0], torch.tensor([255 - 104.00698793, 255 - 116.66876762, 255 - 122.67891434]))


def test_synthetic_is_deterministic_long_tailed_and_shifted():
    a, b = SyntheticRoadScenes("source", length=40, seed=3), SyntheticRoadScenes("source", length=40, seed=3)
    assert torch.equal(a[5]["image"], b[5]["image"]) and torch.equal(a[5]["label"], b[5]["label"])
    t = SyntheticRoadScenes("target", length=40, seed=3)
    assert torch.equal(a[5]["label"], t[5]["label"])  # same layout, other style
    assert t[5]["image"].mean() < a[5]["image"].mean() - 0.15  # dusk is darker
    counts = np.zeros(len(SYNTHETIC_CLASSES))
    for i in range(40):
        counts += np.bincount(a[i]["label"].flatten().numpy(), minlength=len(counts))
    share = counts / counts.sum()
    idx = {c: i for i, c in enumerate(SYNTHETIC_CLASSES)}
    assert share[idx["road"]] > 0.15 and share[idx["sky"]] > 0.15
    for tail in ("pole", "sign", "person"):
        assert 0 < share[idx[tail]] < 0.015
    small = SyntheticRoadScenes("source", length=3, seed=3)
    expected = sum(np.bincount(small.read_label(i).flatten().numpy(), minlength=len(counts)) for i in range(3))
    assert pixel_counts(small).tolist() == expected.tolist()  # read_label: the untransformed labels


def test_median_frequency_weights_on_real_camvid_favour_the_tail(camvid_root):
    from uda_perturb.class_balance import resolve_class_weights

    day = up.DATASETS.build("camvid", root=str(camvid_root), split=["train", "val"], sequences=["0006R0", "0016E5"])
    w = dict(zip(day.info.classes, resolve_class_weights("median_frequency", day, 11).tolist()))
    # SegNet's published CamVid weights have the same ordering: rare thin classes >> 1 > sky, building, road
    assert min(w["Pole"], w["Pedestrian"], w["SignSymbol"], w["Bicyclist"]) > 3.0
    assert max(w["Road"], w["Building"], w["Sky"]) < 0.5


def test_camvid_held_out_dusk_frames_follow_the_protocol(camvid_root):
    adapt = up.DATASETS.build("camvid", root=str(camvid_root), split="train", sequences=["0001TP"],
                              frames=[6690, 7860])
    held = up.DATASETS.build("camvid", root=str(camvid_root), split="train", sequences=["0001TP"],
                             frames=[7890, 8520])
    assert len(adapt) == 40 and len(held) == 22 and not {p.name for p in adapt.images} & {p.name for p in held.images}
    assert (adapt.images[0].name, adapt.images[-1].name) == ("0001TP_006690.png", "0001TP_007860.png")
    assert (held.images[0].name, held.images[-1].name) == ("0001TP_007890.png", "0001TP_008520.png")
    with pytest.raises(ValueError, match="first <= last"):
        up.DATASETS.build("camvid", root=str(camvid_root), frames=[9, 1])


def test_the_swapped_target_paints_road_and_sidewalk_in_each_others_day_colours():
    from uda_perturb.data.synthetic import ROAD, SIDEWALK, synthetic

    def brightness(ds, cls):
        item = ds[0]
        return float(item["image"].mean(0)[item["label"] == cls].mean())

    source = synthetic(domain="source", seed=5, length=1)
    swapped = synthetic(domain="target", seed=5, length=1, target_style="swapped")
    assert brightness(source, ROAD) < brightness(source, SIDEWALK)  # day: a dark road, a light sidewalk
    assert brightness(swapped, ROAD) > brightness(swapped, SIDEWALK)  # swapped: the other way round
    assert torch.equal(source[0]["label"], swapped[0]["label"])  # the same layout
    with pytest.raises(DataError, match=r"target_style must be one of \('dusk', 'swapped'\), got 'night'"):
        synthetic(domain="target", target_style="night")
