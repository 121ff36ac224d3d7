import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_ROOT = SHARED_DATA / "mnist"


@pytest.fixture
def mnist_root():
    if not (MNIST_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found at {MNIST_ROOT} (shared data absent on this machine)")
    return MNIST_ROOT
