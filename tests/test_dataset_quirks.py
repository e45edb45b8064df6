"""Real-data quirks handled as the reference loaders do (GTA5, SYNTHIA, Cityscapes): unknown label ids map
to ignore, a label of another size is resized to its image, missing pairs are named in one message or
skipped; each counted and warned about once, with strict options to raise. CamVid stays strict."""
import numpy as np
import pytest
from PIL import Image

import uda_perturb as up


def save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8), mode=mode).save(path)


def gta5_fixture(root, n=3, bad_ids=(), small_label=()):
    for i in range(n):
        save(root / "images" / f"{i:05d}.png", np.full((4, 6, 3), 90))
        lab = np.full((2, 3) if i in small_label else (4, 6), 7)  # 7 = road
        if i in bad_ids:
            lab[0, 0] = 40  # not a Cityscapes labelId
        save(root / "labels" / f"{i:05d}.png", lab, "L")


def test_unknown_ids_become_ignore_counted_and_warned_once(tmp_path):
    gta5_fixture(tmp_path, bad_ids=(0, 2))
    ds = up.DATASETS.build("gta5", root=str(tmp_path))
    with pytest.warns(UserWarning, match=r"ids \[40\] outside the label map; they are ignored"):
        first = ds[0]
    assert first["label"][0, 0] == 255 and first["label"][1, 1] == 0
    ds[1]
    ds[2]  # the second bad frame is counted, not warned about again
    assert ds.quirks["unknown_ids"] == 2
    strict = up.DATASETS.build("gta5", root=str(tmp_path), strict_labels=True)
    with pytest.raises(ValueError, match=r"values \[40\] are (outside|not in) the label map"):
        strict[0]


def test_label_of_another_size_is_resized_to_its_image(tmp_path):
    gta5_fixture(tmp_path, small_label=(1,))
    ds = up.DATASETS.build("gta5", root=str(tmp_path))
    with pytest.warns(UserWarning, match="resized to their image"):
        item = ds[1]
    assert item["label"].shape == (4, 6) and int(item["label"].max()) == 0 and ds.quirks["resized_labels"] == 1
    with pytest.raises(ValueError, match=r"is \(2, 3\) but image"):
        up.DATASETS.build("gta5", root=str(tmp_path), strict_sizes=True)[1]


def test_missing_pairs_are_listed_in_one_message_or_skipped(tmp_path):
    gta5_fixture(tmp_path, n=5)
    for i in (1, 3):
        (tmp_path / "labels" / f"{i:05d}.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of 5 image/label pairs have a missing file \(first: .*00001.png"
                                                r", .*00003.png\).*skip_missing"):
        up.DATASETS.build("gta5", root=str(tmp_path))
    with pytest.warns(UserWarning, match="skipping them"):
        ds = up.DATASETS.build("gta5", root=str(tmp_path), skip_missing=True)
    assert [p.name for p in ds.images] == ["00000.png", "00002.png", "00004.png"]


def test_camvid_stays_strict(tmp_path):
    ds_factory = up.DATASETS.get("camvid")
    import inspect

    assert "strict_labels" not in inspect.signature(ds_factory).parameters
