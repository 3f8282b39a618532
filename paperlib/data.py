"""Datasets: Fashion-MNIST (the default, real data), CIFAR-10, ImageNet and seeded synthetic stand-ins.

Every dataset yields ``(x, y)`` with ``x`` a float32 tensor ``[C, H, W]`` with pixels in [0, 1] and ``y`` an
int label. Normalization, where a recipe wants it, lives inside the model (:class:`paperlib.models.Normalize`),
so attacks and bounds always measure distances in [0, 1] pixel units.

Names understood by :func:`load_dataset`:

``fashion-mnist``
    The four original gzip IDX files. Looked for, in order, in ``root`` (argument), ``$PAPERLIB_FMNIST_DIR``,
    ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``), ``$PAPERLIB_DATA/fashion-mnist``
    and ``~/.cache/paperlib/fashion-mnist``; with ``download=True`` torchvision's downloader fills the last one
    where the network allows. Loaded once into memory as uint8 (47 MB) and cached for the process.
``cifar10``
    torchvision's CIFAR10 under ``root`` / ``$PAPERLIB_CIFAR10_DIR`` / ``$PAPERLIB_DATA/cifar10``. Training
    augmentation as in the authors' code: random crop 32 with padding 4, horizontal flip, Cutout 16.
``imagenet``
    An ImageFolder root with ``train/`` and ``val/`` (``root`` or ``$PAPERLIB_IMAGENET_DIR``). Training:
    RandomResizedCrop 224 and flip; evaluation: resize 256, centre crop 224.
``synthetic-fashion-mnist``, ``synthetic-cifar10``, ``synthetic-imagenet``
    Seeded random images of that dataset's shape (in memory, learnable: each class has its own mean
    pattern), for tests of the large recipes on a machine without the data.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from paperlib.config import ConfigError, check_choice, check_count, check_int

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "FASHION_MNIST_CLASSES",
    "DataNotFoundError",
    "InMemoryDataset",
    "dataset_info",
    "check_split_count",
    "load_dataset",
    "make_loader",
    "subset",
    "sample_images",
    "fashion_mnist_search_paths",
    "dataset_status",
]


class DataNotFoundError(ConfigError):
    """The dataset files are not where we looked; the message lists every place and how to get them."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: image shape ``(C, H, W)``, class count and split sizes."""

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    train_size: int | None
    test_size: int | None


_INFO = {
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, 60000, 10000),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, 50000, 10000),
    "imagenet": DatasetInfo("imagenet", (3, 224, 224), 1000, 1281167, 50000),
}
# Synthetic sizes are small: they exist to exercise the large recipes' code paths, not to learn anything.
_SYNTHETIC_SIZES = {"fashion-mnist": (2048, 512), "cifar10": (512, 256), "imagenet": (64, 32)}
for _like, (_ntr, _nte) in _SYNTHETIC_SIZES.items():
    _base = _INFO[_like]
    _INFO[f"synthetic-{_like}"] = DatasetInfo(f"synthetic-{_like}", _base.shape, _base.num_classes, _ntr, _nte)

DATASETS: tuple[str, ...] = tuple(_INFO)

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
SPLITS = ("train", "test")


def dataset_info(name: str) -> DatasetInfo:
    """Shape, number of classes and split sizes of a dataset name."""
    check_choice("dataset", name, DATASETS)
    return _INFO[name]


def check_split_count(name: str, n: Any, dataset: str, split: str) -> int:
    """Require an integer ``n`` in ``[1, size]``, ``size`` being the number of images of ``dataset``'s
    ``split`` (``'train'`` or ``'test'``, from :func:`dataset_info`); the message names the option (``name``)
    and the split's size. The rule of every entry point that takes a number of images (``--n``,
    ``--n-images``, ``--train-subset``, ``--test-subset``, ``n_images``)."""
    info = dataset_info(dataset)
    check_choice("split", split, SPLITS)
    size = info.train_size if split == "train" else info.test_size
    if size is None:  # pragma: no cover - every known dataset has sizes
        return check_int(name, n, 1)
    return check_count(name, n, size, f"{'training' if split == 'train' else 'test'} images of {dataset}")


# --------------------------------------------------------------------------------------------------
# In-memory datasets
# --------------------------------------------------------------------------------------------------


class InMemoryDataset(Dataset):
    """Images held in memory as a tensor ``[N, C, H, W]`` (uint8 in 0..255, or float in [0, 1]).

    Indexing returns ``(x float32 [C,H,W] in [0,1], y int)``; :meth:`tensors` returns whole-split float
    tensors; :func:`make_loader` batches by slicing, with no per-item Python overhead.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str = "in-memory") -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [N] with N={images.shape[0]}, got shape {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def _to_float(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.dtype == torch.uint8:
            return imgs.float().div_(255.0)
        return imgs.float()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._to_float(self.images[i]), int(self.labels[i])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels at ``index`` (a 1-d LongTensor), images as float in [0, 1]."""
        return self._to_float(self.images[index]), self.labels[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as float32 ``[N, C, H, W]`` in [0, 1] and labels int64 ``[N]``."""
        return self._to_float(self.images), self.labels.clone()


class _Subset(Dataset):
    def __init__(self, base: Dataset, indices: torch.Tensor) -> None:
        self.base = base
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]


def _set_name(dataset: Dataset) -> str:
    return f"images of {getattr(dataset, 'name', None) or 'the dataset'}"


def subset(dataset: Dataset, n: int | None, seed: int = 0, *, name: str = "n") -> Dataset:
    """A seeded random subset of ``n`` items (``None`` or ``n == len`` returns the dataset unchanged).

    In-memory datasets stay in memory (an :class:`InMemoryDataset` with the chosen rows). ``n`` larger than
    the dataset is a :class:`~paperlib.config.ConfigError` naming its size (``name`` is the option's name in
    the message, e.g. ``'train_subset'``).
    """
    if n is None:
        return dataset
    check_count(name, n, len(dataset), _set_name(dataset))
    if n == len(dataset):
        return dataset
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(dataset, InMemoryDataset):
        return InMemoryDataset(dataset.images[idx], dataset.labels[idx], name=dataset.name)
    return _Subset(dataset, idx)


def sample_images(dataset: Dataset, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` seeded-random images of ``dataset`` without replacement: ``(x [n,C,H,W] in [0,1], y [n], idx [n])``.

    ``idx`` are positions in ``dataset``; the same ``(n, seed)`` always picks the same images, so the attack
    suite, the bounds and the certification of one model line up image by image. The draw is a prefix of
    one seeded permutation, so the first ``k`` images of a larger draw are exactly the images of a draw of
    ``k`` (a 200-image run is a subset of the 1000-image run with the same seed). ``n`` larger than the
    dataset is a :class:`~paperlib.config.ConfigError` naming its size.
    """
    n = check_count("n", n, len(dataset), _set_name(dataset))
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    if isinstance(dataset, InMemoryDataset):
        x, y = dataset.batch(idx)
        return x, y, idx
    items = [dataset[int(i)] for i in idx]
    x = torch.stack([it[0] for it in items])
    y = torch.tensor([int(it[1]) for it in items])
    return x, y, idx


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


class _SliceLoader:
    """Batches of an in-memory dataset by index slicing; a rank's shard like DistributedSampler's."""

    def __init__(self, dataset: InMemoryDataset, batch_size: int, shuffle: bool, seed: int, epoch: int,
                 rank: int, world_size: int, drop_last: bool) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        n = len(dataset)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 100003 * epoch))
        else:
            order = torch.arange(n)
        if world_size > 1:
            # Each global batch of batch_size*world_size consecutive items is split by rank, so that rank r
            # gets the r-th slice of every global batch: gradient averaging over ranks then equals one
            # process on the global batch (exactly, for BatchNorm-free models).
            per_rank = n // world_size if drop_last else -(-n // world_size)
            total = per_rank * world_size
            if total > n:
                order = torch.cat([order, order[: total - n]])
            order = order[:total]
            gb = batch_size * world_size
            chunks = [order[i: i + gb] for i in range(0, total, gb)]
            order = torch.cat([c.tensor_split(world_size)[rank] for c in chunks]) if chunks else order
        self.order = order
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(len(self)):
            index = self.order[b * self.batch_size: (b + 1) * self.batch_size]
            yield self.dataset.batch(index)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                rank: int = 0, world_size: int = 1, drop_last: bool = False, num_workers: int = 0):
    """Iterable of ``(x [B,C,H,W] in [0,1], y [B])`` batches, reproducible from ``(seed, epoch)``.

    ``batch_size`` is per rank. With ``world_size > 1`` each rank sees a disjoint shard (as with
    ``DistributedSampler``): in-memory datasets give rank ``r`` the ``r``-th slice of every global batch.
    In-memory datasets are sliced directly (fast); others go through a ``DataLoader`` with ``num_workers``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank!r} must lie in [0, world_size={world_size})")
    if isinstance(dataset, InMemoryDataset):
        return _SliceLoader(dataset, batch_size, shuffle, seed, epoch, rank, world_size, drop_last)
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    g = torch.Generator().manual_seed(seed + 100003 * epoch)
    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=g) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, generator=g)


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------------

FMNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_HOW_TO_GET_FMNIST = (
    "get it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four IDX files "
    "(train-images-idx3-ubyte.gz, ...) in a directory and set PAPERLIB_FMNIST_DIR to it, or run "
    "`paperlib data --download fashion-mnist` where the network allows"
)


def _cache_dir() -> Path:
    return Path(os.environ.get("PAPERLIB_DATA", Path.home() / ".cache" / "paperlib"))


def fashion_mnist_search_paths(root: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for Fashion-MNIST, in order (an explicit ``root`` first)."""
    paths: list[Path] = []
    if root is not None:
        paths.append(Path(root))
    if os.environ.get("PAPERLIB_FMNIST_DIR"):
        paths.append(Path(os.environ["PAPERLIB_FMNIST_DIR"]))
    paths += [FMNIST_DEBIAN_DIR, _cache_dir() / "fashion-mnist",
              _cache_dir() / "fashion-mnist" / "FashionMNIST" / "raw"]
    return paths


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _read_idx(path: Path) -> torch.Tensor:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataNotFoundError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 8:
        raise DataNotFoundError(f"{path} is not an IDX file (only {len(data)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise DataNotFoundError(f"{path} is not a uint8 IDX file of 1 or 3 dimensions (header {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    expected = 4 + 4 * ndim
    count = 1
    for d in dims:
        count *= d
    if len(data) != expected + count:
        raise DataNotFoundError(f"{path} is truncated: {len(data)} bytes, expected {expected + count}")
    return torch.frombuffer(bytearray(data[expected:]), dtype=torch.uint8).reshape(dims)


def _locate_fashion_mnist(root, split: str) -> tuple[Path, Path]:
    img_stem, lbl_stem = _FMNIST_FILES[split]
    if root is not None and not Path(root).is_dir():
        raise DataNotFoundError(f"Fashion-MNIST directory {str(root)!r} does not exist; {_HOW_TO_GET_FMNIST}")
    looked = fashion_mnist_search_paths(root)
    for directory in looked:
        imgs, lbls = _find_idx(directory, img_stem), _find_idx(directory, lbl_stem)
        if imgs is not None and lbls is not None:
            return imgs, lbls
    raise DataNotFoundError(
        f"Fashion-MNIST {split} files ({img_stem}[.gz], {lbl_stem}[.gz]) not found; looked in "
        + ", ".join(str(p) for p in looked) + f"; {_HOW_TO_GET_FMNIST}"
    )


@lru_cache(maxsize=4)
def _fashion_mnist_tensors(imgs_path: str, lbls_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = _read_idx(Path(imgs_path))
    labels = _read_idx(Path(lbls_path)).long()
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataNotFoundError(f"{imgs_path} and {lbls_path} do not match: {tuple(images.shape)} vs "
                                f"{tuple(labels.shape)}")
    return images.unsqueeze(1).contiguous(), labels


def _download_fashion_mnist() -> None:
    from torchvision.datasets import FashionMNIST

    target = _cache_dir() / "fashion-mnist"
    for train in (True, False):
        FashionMNIST(str(target), train=train, download=True)


def load_fashion_mnist(split: str, root=None, download: bool = False) -> InMemoryDataset:
    try:
        imgs, lbls = _locate_fashion_mnist(root, split)
    except DataNotFoundError:
        if not download:
            raise
        _download_fashion_mnist()
        imgs, lbls = _locate_fashion_mnist(root, split)
    images, labels = _fashion_mnist_tensors(str(imgs), str(lbls))
    return InMemoryDataset(images, labels, name="fashion-mnist")


# --------------------------------------------------------------------------------------------------
# CIFAR-10 and ImageNet
# --------------------------------------------------------------------------------------------------


class Cutout:
    """Zero a random ``size x size`` square of a ``[C,H,W]`` image (DeVries & Taylor 2017), as the authors'
    CIFAR recipe does. The square's centre is uniform over the image, so the patch may be clipped."""

    def __init__(self, size: int = 16) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _, h, w = img.shape
        cy = int(torch.randint(h, (1,)))
        cx = int(torch.randint(w, (1,)))
        y0, y1 = max(cy - self.size // 2, 0), min(cy + self.size // 2, h)
        x0, x1 = max(cx - self.size // 2, 0), min(cx + self.size // 2, w)
        img = img.clone()
        img[:, y0:y1, x0:x1] = 0.0
        return img


def cifar10_transform(augment: bool):
    from torchvision import transforms as T

    if not augment:
        return T.ToTensor()
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), Cutout(16)])


def imagenet_transform(augment: bool, size: int = 224):
    from torchvision import transforms as T

    if augment:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])
    return T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor()])


def load_cifar10(split: str, root=None, augment: bool = False, download: bool = False) -> Dataset:
    from torchvision.datasets import CIFAR10

    looked = [Path(p) for p in (root, os.environ.get("PAPERLIB_CIFAR10_DIR"), _cache_dir() / "cifar10") if p]
    for directory in looked:
        if (directory / "cifar-10-batches-py").is_dir():
            try:
                return CIFAR10(str(directory), train=split == "train", transform=cifar10_transform(augment))
            except (RuntimeError, OSError, pickle.UnpicklingError, EOFError) as exc:
                raise DataNotFoundError(
                    f"CIFAR-10 in {directory / 'cifar-10-batches-py'} could not be read ({exc}); delete it and "
                    "run `paperlib data --download cifar10` where the network allows"
                ) from None
    if download:
        return CIFAR10(str(looked[0]), train=split == "train", transform=cifar10_transform(augment), download=True)
    raise DataNotFoundError(
        "CIFAR-10 (cifar-10-batches-py/) not found; looked in " + ", ".join(map(str, looked))
        + "; download it with `paperlib data --download cifar10` where the network allows, or set "
        "PAPERLIB_CIFAR10_DIR to the directory holding cifar-10-batches-py/"
    )


def load_imagenet(split: str, root=None, augment: bool = False) -> Dataset:
    from torchvision.datasets import ImageFolder

    looked = [Path(p) for p in (root, os.environ.get("PAPERLIB_IMAGENET_DIR")) if p]
    sub = "train" if split == "train" else "val"
    for directory in looked:
        if (directory / sub).is_dir():
            return ImageFolder(str(directory / sub), transform=imagenet_transform(augment))
    raise DataNotFoundError(
        f"ImageNet {sub}/ not found; looked in " + (", ".join(map(str, looked)) or "(no directory given)")
        + "; ImageNet cannot be downloaded automatically: get ILSVRC2012 from image-net.org, arrange it as "
        "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, and pass --data-root or set PAPERLIB_IMAGENET_DIR"
    )


# --------------------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------------------


def load_synthetic(like: str, split: str, seed: int = 0) -> InMemoryDataset:
    """Seeded random images shaped like ``like``: class ``k`` has mean pattern ``m_k``, images are
    ``clip(m_k + 0.15 * noise, 0, 1)`` (so a model can learn them). Train and test differ by seed."""
    info = _INFO[like]
    n_train, n_test = _SYNTHETIC_SIZES[like]
    n = n_train if split == "train" else n_test
    c, h, w = info.shape
    g = torch.Generator().manual_seed(seed)
    # Class patterns at low resolution, upsampled: cheap for 224 px and smooth enough to be learnable.
    low = torch.rand(info.num_classes, c, 7, 7, generator=g)
    g.manual_seed(seed + (1 if split == "train" else 2))
    labels = torch.randint(info.num_classes, (n,), generator=g)
    # uint8 storage keeps synthetic ImageNet small (64 x 3 x 224 x 224 bytes).
    images = torch.empty(n, c, h, w, dtype=torch.uint8)
    for start in range(0, n, 256):
        lab = labels[start: start + 256]
        base = torch.nn.functional.interpolate(low[lab], size=(h, w), mode="bilinear", align_corners=False)
        noisy = (base + 0.15 * torch.randn(base.shape, generator=g)).clamp_(0, 1)
        images[start: start + 256] = (noisy * 255).round_().to(torch.uint8)
    return InMemoryDataset(images, labels, name=f"synthetic-{like}")


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def load_dataset(name: str, split: str = "train", *, root: str | os.PathLike | None = None,
                 augment: bool = False, download: bool = False, seed: int = 0) -> Dataset:
    """Load a split of a dataset; items are ``(x float32 [C,H,W] in [0,1], y int)``.

    Args:
        name: one of :data:`DATASETS`.
        split: ``'train'`` or ``'test'`` (ImageNet's ``val/`` is its test split).
        root: directory to look in first (see the module docstring for the search order).
        augment: apply the recipe's training augmentation (CIFAR-10, ImageNet; ignored for in-memory data).
        download: allow torchvision's downloader where the network allows (Fashion-MNIST, CIFAR-10).
        seed: seed of the synthetic datasets.

    Raises:
        DataNotFoundError: the files are missing; the message lists every place looked and how to get them.
        ConfigError: unknown dataset or split.
    """
    check_choice("dataset", name, DATASETS)
    check_choice("split", split, SPLITS)
    if name == "fashion-mnist":
        return load_fashion_mnist(split, root, download)
    if name == "cifar10":
        return load_cifar10(split, root, augment, download)
    if name == "imagenet":
        return load_imagenet(split, root, augment)
    return load_synthetic(name[len("synthetic-"):], split, seed)


def dataset_status(names: Sequence[str] = ("fashion-mnist", "cifar10", "imagenet"), root=None) -> list[dict]:
    """For ``paperlib data``: per dataset, whether it is found, where, and its split sizes."""
    rows = []
    for name in names:
        row: dict = {"dataset": name, "found": False, "train": None, "test": None, "where": None, "note": ""}
        try:
            tr, te = load_dataset(name, "train", root=root), load_dataset(name, "test", root=root)
            row.update(found=True, train=len(tr), test=len(te))
            if name == "fashion-mnist":
                row["where"] = str(_locate_fashion_mnist(root, "train")[0].parent)
            elif hasattr(tr, "root"):
                row["where"] = str(tr.root)
        except DataNotFoundError as exc:
            row["note"] = str(exc)
        rows.append(row)
    return rows
