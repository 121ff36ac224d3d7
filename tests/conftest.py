import os
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
# the registry manifest (clmem.manifest) of the test run stays out of the user's ~/.cache
os.environ.setdefault("CLMEM_CACHE_DIR", tempfile.mkdtemp(prefix="clmem-test-cache-"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_ROOT = SHARED_DATA / "mnist"


@pytest.fixture
def mnist_root():
    if not (MNIST_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found at {MNIST_ROOT} (shared data absent on this machine)")
    return MNIST_ROOT
