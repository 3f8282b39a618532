"""Shared test settings.

Progress bars are disabled everywhere (also inside the kernels nbval starts, which inherit this environment),
so notebook outputs compare cleanly with their committed versions.
"""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
# The tests use small models: one intra-op thread avoids oversubscription (measured: a tiny forward took
# 10 ms with 2 threads on a loaded 2-core machine, 90 us with 1). Subprocesses and kernels are unaffected.
torch.set_num_threads(1)
os.environ.setdefault("PYTHONHASHSEED", "0")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one intra-op thread (a test that changes it does not leak into the next)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


def fashion_mnist_available() -> bool:
    from paperlib.data import DataNotFoundError, load_dataset

    try:
        load_dataset("fashion-mnist", "test")
        return True
    except DataNotFoundError:
        return False


requires_fmnist = pytest.mark.skipif(
    not fashion_mnist_available(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist, or set PAPERLIB_FMNIST_DIR)",
)
