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


@pytest.fixture(scope="module")
def committed_undefended():
    """The committed undefended Fashion-MNIST model (``runs/fmnist/undefended``) in eval mode and the grid's 60
    attacked test images ``(model, x, y, idx)``; skipped where real Fashion-MNIST is not installed."""
    from paperlib.data import DataNotFoundError, load_dataset, sample_images
    from paperlib.training import load_trained

    try:
        test_set = load_dataset("fashion-mnist", "test")
    except DataNotFoundError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"real Fashion-MNIST not found ({exc})")
    model, _ = load_trained(REPO / "runs" / "fmnist" / "undefended")
    model.eval()
    x, y, idx = sample_images(test_set, 60, seed=0)
    return model, x, y, idx
