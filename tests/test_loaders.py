"""The data stream is a function of (seed, position): workers and resume positions do not change it."""
import itertools

import torch

from uda_perturb.data import SyntheticRoadScenes, build_transforms
from uda_perturb.engine.distributed import DistInfo
from uda_perturb.engine.loaders import InfiniteSampler, stream


def take(it, n):
    return list(itertools.islice(it, n))


def test_stream_independent_of_workers_and_resumable_at_any_batch():
    ds = SyntheticRoadScenes("source", size=(16, 24), length=5,
                             transform=build_transforms(crop=(12, 16), scale=(0.7, 1.3), flip=True, photometric=True))
    a = take(stream(ds, 2, seed=3, start=0, info=DistInfo()), 4)
    b = take(stream(ds, 2, seed=3, start=0, info=DistInfo(), num_workers=2), 4)
    c = take(stream(ds, 2, seed=3, start=2, info=DistInfo()), 2)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    for x, y in zip(a[2:], c):
        assert torch.equal(x["image"], y["image"]) and x["name"] == y["name"]
    assert not torch.equal(a[0]["image"], take(stream(ds, 2, seed=4, start=0, info=DistInfo()), 1)[0]["image"])


def test_sampler_epochs_are_permutations_and_ranks_interleave():
    s = InfiniteSampler(7, seed=1)
    first = [i for i, _ in take(iter(s), 14)]
    assert sorted(first[:7]) == list(range(7)) and sorted(first[7:]) == list(range(7))
    r0 = [k for k in take(iter(InfiniteSampler(7, 1, rank=0, world_size=2)), 5)]
    r1 = [k for k in take(iter(InfiniteSampler(7, 1, rank=1, world_size=2)), 5)]
    merged = [x for pair in zip(r0, r1) for x in pair]
    assert merged == take(iter(s), 10)


def test_a_huge_seed_wraps_modulo_2_63_in_the_epoch_order_and_the_item_seeds():
    # seed * 100003 just above 2**63: modulo 2**63 and modulo 2**64 differ (the CPU generator reads only the low 32
    # bits, so the epoch order is the same under both: the item seeds below are what the modulus changes)
    seed = 2**63 // 100003 + 1
    assert (seed * 100003) % 2**63 != (seed * 100003) % 2**64
    got = take(iter(InfiniteSampler(6, seed)), 6)
    g = torch.Generator().manual_seed((seed * 100003) % 2**63)
    assert [i for i, _ in got] == torch.randperm(6, generator=g).tolist()
    assert [s for _, s in got] == [(seed * 1_000_003 + p) % 2**63 for p in range(6)]


def test_redraw_seeds_are_pinned_mixes_below_2_63():
    from uda_perturb.engine.loaders import redraw_seed

    mix = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
    for seed, j in ((0, 0), (1, 1), (7, 3), (2**62, 10)):
        assert redraw_seed(seed, j) == (seed * mix[0] + j * mix[1] + mix[2]) % 2**63 < 2**63


def _config(flip, photometric):
    from uda_perturb.config import DatasetConfig, TransformConfig

    return DatasetConfig(name="synthetic", options={"domain": "source", "size": [16, 24], "length": 4},
                         transforms=TransformConfig(flip=flip, photometric=photometric))


def test_random_flip_and_photometric_apply_to_training_items_only_and_only_when_asked():
    from uda_perturb.engine.loaders import build_dataset

    def images(ds):
        out = []
        for s in range(12):
            torch.manual_seed(s)
            out.append(ds[1]["image"])
        return out

    for flip, photometric, train, random in ((True, True, False, False), (False, False, True, False),
                                             (True, False, True, True), (False, True, True, True)):
        imgs = images(build_dataset(_config(flip, photometric), train=train))
        varies = any(not torch.equal(imgs[0], x) for x in imgs[1:])
        assert varies == random, (flip, photometric, train)


def test_the_eval_loader_is_sequential_and_in_the_main_process():
    from uda_perturb.engine.loaders import eval_loader

    ds = SyntheticRoadScenes("source", size=(8, 8), length=7)
    loader = eval_loader(ds, 2, DistInfo())
    assert loader.num_workers == 0
    names = [n for b in loader for n in b["name"]]
    assert names == [ds[i]["name"] for i in range(7)]
    assert type(stream(ds, 2, 0, 0, DistInfo())).__name__ == "_SingleProcessDataLoaderIter"


def test_rare_class_sampling_without_num_classes_is_refused_in_one_line():
    import pytest

    from uda_perturb.config import RareClassSamplingConfig

    ds = SyntheticRoadScenes("source", size=(8, 8), length=3)
    with pytest.raises(ValueError, match=r"^rare-class sampling needs num_classes$"):
        stream(ds, 2, 0, 0, DistInfo(), rare_class_sampling=RareClassSamplingConfig())
