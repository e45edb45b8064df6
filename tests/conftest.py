import os
import pathlib

import pytest
import torch

CAMVID = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    if "OMP_NUM_THREADS" not in os.environ:  # respect a thread count the caller chose
        torch.set_num_threads(2)


@pytest.fixture
def camvid_root():
    if not (CAMVID / "train.txt").exists():
        pytest.skip(f"CamVid copy not found at {CAMVID}")
    return CAMVID
