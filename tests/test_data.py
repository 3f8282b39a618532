import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from paperlib.config import ConfigError
from paperlib.data import (DataNotFoundError, InMemoryDataset, dataset_info, load_dataset, make_loader,
                           sample_images, subset)
from tests.conftest import requires_fmnist


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fmnist(directory, n_train=20, n_test=10):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(directory / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(directory / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))


@requires_fmnist
def test_fashion_mnist_is_the_real_dataset_in_unit_interval():
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    x, y = test.tensors()
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1
    assert torch.bincount(y).tolist() == [1000] * 10
    # loaded once: a second call returns the same storage
    assert load_dataset("fashion-mnist", "test").images.data_ptr() == test.images.data_ptr()


def test_fashion_mnist_from_a_given_directory(tmp_path):
    _fake_fmnist(tmp_path)
    ds = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert len(ds) == 10 and ds[0][0].shape == (1, 28, 28)


def test_missing_fashion_mnist_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setattr("paperlib.data.FMNIST_DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setenv("PAPERLIB_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("PAPERLIB_FMNIST_DIR", raising=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion-mnist", "train", root=tmp_path / "empty")
    msg = str(err.value)
    for place in ("empty", "debian", "cache"):
        assert place in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "PAPERLIB_FMNIST_DIR" in msg


def test_missing_data_directory_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr("paperlib.data.FMNIST_DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setenv("PAPERLIB_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("fashion-mnist", "train", root=tmp_path / "nope")


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    _fake_fmnist(tmp_path)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataNotFoundError, match="truncated"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_unknown_dataset_and_split():
    with pytest.raises(ConfigError, match="dataset='mnist'"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="split='val'"):
        load_dataset("synthetic-cifar10", "val")


@pytest.mark.parametrize("like", ["fashion-mnist", "cifar10", "imagenet"])
def test_synthetic_datasets_have_the_real_shapes_and_are_seeded(like):
    ds = load_dataset(f"synthetic-{like}", "test")
    info = dataset_info(like)
    x, y = ds.tensors()
    assert x.shape[1:] == info.shape and 0 <= x.min() and x.max() <= 1
    assert y.max() < info.num_classes
    x2, y2 = load_dataset(f"synthetic-{like}", "test").tensors()
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = load_dataset(f"synthetic-{like}", "test", seed=1).tensors()
    assert not torch.equal(x, x3)


def test_loader_visits_every_example_once_and_is_reproducible():
    ds = InMemoryDataset(torch.arange(10).view(10, 1, 1, 1).to(torch.uint8), torch.arange(10))
    batches = list(make_loader(ds, 4, shuffle=True, seed=3, epoch=1))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(10))
    again = torch.cat([b[1] for b in make_loader(ds, 4, shuffle=True, seed=3, epoch=1)])
    other_epoch = torch.cat([b[1] for b in make_loader(ds, 4, shuffle=True, seed=3, epoch=2)])
    assert torch.equal(again, torch.cat([b[1] for b in batches])) and not torch.equal(again, other_epoch)


def test_distributed_shards_are_disjoint_slices_of_the_global_batches():
    ds = InMemoryDataset(torch.zeros(16, 1, 1, 1, dtype=torch.uint8), torch.arange(16))
    single = [b[1] for b in make_loader(ds, 8, shuffle=True, seed=0)]
    ranks = [[b[1] for b in make_loader(ds, 4, shuffle=True, seed=0, rank=r, world_size=2)] for r in (0, 1)]
    for step, global_batch in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][step], ranks[1][step]]), global_batch)


def test_subset_and_sample_images_are_seeded():
    ds = load_dataset("synthetic-fashion-mnist", "test")
    a, b = subset(ds, 50, seed=1), subset(ds, 50, seed=1)
    assert len(a) == 50 and torch.equal(a.labels, b.labels)
    x, y, idx = sample_images(ds, 7, seed=2)
    x2, y2, idx2 = sample_images(ds, 7, seed=2)
    assert torch.equal(idx, idx2) and torch.equal(x, ds.batch(idx)[0]) and len(set(idx.tolist())) == 7
    with pytest.raises(ConfigError, match="n=0"):
        sample_images(ds, 0)


def test_cifar10_loader_reads_the_real_format(tmp_path, monkeypatch):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 6)]:
        with open(root / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    # torchvision checks the real files' md5 sums; these synthetic files have others
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    monkeypatch.setattr("torchvision.datasets.CIFAR10._check_integrity", lambda self: True)
    train = load_dataset("cifar10", "train", root=tmp_path, augment=True)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert (len(train), len(test)) == (20, 6)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    batch = next(iter(make_loader(test, 3, shuffle=False)))
    assert batch[0].shape == (3, 3, 32, 32)


def test_imagenet_loader_reads_an_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            d = tmp_path / split / wnid
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.random.default_rng(i).integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(
                    d / f"{i}.JPEG")
    train = load_dataset("imagenet", "train", root=tmp_path, augment=True)
    val = load_dataset("imagenet", "test", root=tmp_path)
    assert len(train) == 4 and len(val) == 4
    assert train[0][0].shape == (3, 224, 224) and val[0][0].shape == (3, 224, 224)
    with pytest.raises(DataNotFoundError, match="image-net.org"):
        load_dataset("imagenet", "train", root=tmp_path / "missing")


def test_corrupt_cifar10_is_a_clear_error(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(b"garbage")
    with pytest.raises(DataNotFoundError, match="CIFAR-10 .* could not be read"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_sample_images_draws_are_prefixes_of_one_permutation():
    ds = load_dataset("synthetic-fashion-mnist", "test")
    _, _, small = sample_images(ds, 20, seed=5)
    _, _, large = sample_images(ds, 100, seed=5)
    assert torch.equal(large[:20], small)
