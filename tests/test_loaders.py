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
