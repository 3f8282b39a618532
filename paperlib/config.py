"""Typed configuration: named profiles, config hashing and input validation.

Every experiment in paperlib is described by a frozen dataclass (``TrainConfig`` in
:mod:`paperlib.training`, ``AttackConfig`` in :mod:`paperlib.attacks.suite`, ``BoundConfig`` and
``CertifyConfig`` in :mod:`paperlib.bounds`).  This module holds what they share:

* :class:`Profile` -- the scale at which the paper's recipe is run (``smoke``, ``fmnist``, ``cifar10``,
  ``imagenet``);
* :func:`config_hash` -- a stable hash of a config, used by the run store (:mod:`paperlib.runs`) so that a
  changed config never loads a stale result;
* :class:`ConfigError` and the ``check_*`` helpers -- every bad user input raises a ``ConfigError`` whose
  message names the bad value and what is allowed; the CLI prints it as one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, TypeVar

__all__ = [
    "ConfigError",
    "Profile",
    "PROFILES",
    "get_profile",
    "config_to_dict",
    "config_from_dict",
    "config_hash",
    "check_choice",
    "check_positive",
    "check_nonnegative",
    "check_probability",
    "check_number",
    "check_int",
    "check_count",
    "check_linf_eps",
    "check_unit_images",
    "check_labels",
    "check_logits",
    "available_devices",
    "check_device",
    "check_runs_dir",
    "parse_number",
    "normalize_norm",
]


class ConfigError(ValueError):
    """A user-facing input error. The message names the bad value and what is allowed.

    The command line prints it as one line; IPython and Jupyter (papermill included) show it as its one-line
    message too, without a traceback.
    """

    def _render_traceback_(self) -> list[str]:
        # IPython's hook for the lines shown in place of a traceback.
        return [f"{type(self).__name__}: {self}"]


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``; otherwise raise :class:`ConfigError`."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    return value


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r} must be a number")
    if not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be finite")
    return value


def check_positive(name: str, value: Any) -> Any:
    """Require a finite number > 0."""
    _check_number(name, value)
    if value <= 0:
        raise ConfigError(f"{name}={value!r} must be > 0")
    return value


def check_nonnegative(name: str, value: Any) -> Any:
    """Require a finite number >= 0."""
    _check_number(name, value)
    if value < 0:
        raise ConfigError(f"{name}={value!r} must be >= 0")
    return value


def check_probability(name: str, value: Any) -> Any:
    """Require a number strictly inside (0, 1)."""
    _check_number(name, value)
    if not 0 < value < 1:
        raise ConfigError(f"{name}={value!r} must lie strictly between 0 and 1")
    return value


def check_number(name: str, value: Any) -> Any:
    """Require a finite real number (``bool`` is not a number; nor is a string such as ``'abc'``)."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
        value = float(value)  # numpy scalars and the like
    return _check_number(name, value)


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Require an integer within ``[minimum, maximum]`` (either end optional); return it as an ``int``.

    ``bool`` is not an integer, and neither is a float (``2.7``, nor ``2.0``): counts are never rounded.
    """
    allowed = ("an integer" + (f" >= {minimum}" if minimum is not None and maximum is None else "")
               + (f" in [{minimum}, {maximum}]" if minimum is not None and maximum is not None else "")
               + (f" <= {maximum}" if minimum is None and maximum is not None else ""))
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name}={value!r} must be {allowed}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name}={value!r} must be {allowed}")
    return value


def check_count(name: str, value: Any, available: int, what: str) -> int:
    """Require an integer count in ``[1, available]``; ``what`` names the set (``'test images of fashion-mnist'``).

    A count larger than the set is an error naming the set's size, never silently cut to it.
    """
    value = check_int(name, value, 1)
    if value > available:
        raise ConfigError(f"{name}={value} exceeds the {available} {what}; choose at most {available}")
    return value


def check_linf_eps(name: str, value: Any, norm: str = "linf") -> Any:
    """Require an l-infinity radius <= 1 when ``norm`` is ``'linf'`` (other norms pass unchecked).

    Pixels lie in [0, 1], so no two images are further apart than 1 in linf: a larger radius is a radius in
    0..255 units (write ``8/255``, not ``8``).
    """
    if not isinstance(norm, str) or norm.lower() != "linf":
        return value
    check_nonnegative(name, value)
    if value > 1:
        raise ConfigError(f"{name}={value!r} is a linf radius larger than 1; pixels are in [0, 1], so linf radii "
                          f"must be <= 1 (e.g. 8/255 = {8 / 255:.4g}, not 8)")
    return value


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"a {str(dtype).replace('torch.', '')} tensor of shape {list(shape)}"
    return f"a {type(value).__name__}"


def check_unit_images(x: Any, name: str = "x") -> Any:
    """Require a floating-point image tensor whose values are all finite and in [0, 1]; return it.

    One reduction (min and max; NaN propagates through both), so one host-device synchronization on a GPU.
    """
    import torch

    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ConfigError(f"{name} must be a floating-point tensor [B, ...] of images with pixels in [0, 1]; "
                          f"got {_describe(x)}")
    if x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if not (lo >= 0.0 and hi <= 1.0):  # false for NaN too
            bad = int((~torch.isfinite(x.detach())).sum())
            if bad:
                raise ConfigError(f"{name} holds {bad} NaN or infinite value(s); images must be finite with pixels "
                                  "in [0, 1]")
            raise ConfigError(f"{name} has pixel values in [{lo:.4g}, {hi:.4g}]; images must lie in [0, 1] "
                              "(divide 0..255 pixels by 255; normalization belongs inside the model)")
    return x


def check_labels(y: Any, num_classes: int, batch: int | None = None, name: str = "y") -> Any:
    """Require an integer label tensor of shape ``[batch]`` (if given) with every label in ``[0, num_classes)``."""
    import torch

    if (not isinstance(y, torch.Tensor) or y.dtype == torch.bool or y.is_floating_point() or y.is_complex()
            or y.dim() != 1):
        raise ConfigError(f"{name} must be a 1-d integer tensor of class labels in [0, {num_classes}); "
                          f"got {_describe(y)}")
    if batch is not None and y.shape[0] != batch:
        raise ConfigError(f"{name} must hold one label per image, shape [{batch}]; got shape {list(y.shape)}")
    if y.numel():
        lo, hi = (int(v) for v in torch.aminmax(y))
        if lo < 0 or hi >= num_classes:
            raise ConfigError(f"{name} holds label {lo if lo < 0 else hi}; labels must lie in [0, {num_classes}) "
                              f"for a model with {num_classes} classes")
    return y


def check_logits(logits: Any, batch: int, name: str = "logits") -> int:
    """Require model outputs of shape ``[batch, K]`` with ``K >= 2``; return ``K``."""
    shape = list(getattr(logits, "shape", ()))
    if getattr(logits, "dim", None) is None or len(shape) != 2 or shape[0] != batch or shape[1] < 2:
        raise ConfigError(f"the model must return {name} of shape [B, K] = [{batch}, K] (K >= 2 classes) for "
                          f"{batch} image(s); got {_describe(logits)}")
    return int(shape[1])


def available_devices() -> list[str]:
    """The devices this process can use: ``'cpu'``, then ``'cuda:0'`` .. ``'cuda:<n-1>'`` (and ``'mps'``)."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def check_device(device: Any, name: str = "device") -> Any:
    """A :class:`torch.device` for ``device`` (``'cpu'``, ``'cuda'``, ``'cuda:N'``, a ``torch.device``).

    An unknown name, or a device this machine does not have (``'cuda:7'`` with fewer GPUs, any CUDA device
    without one), is a :class:`ConfigError` naming it and the devices available.
    """
    import torch

    avail = available_devices()
    listed = ", ".join(map(repr, avail))
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(device.strip() if isinstance(device, str) else device)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(f"{name}={device!r} is not a device; choose one of {listed}"
                              + (" ('cuda' is cuda:0)" if "cuda:0" in avail else "")) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        gpus = [d for d in avail if d.startswith("cuda:")]
        if not gpus:
            raise ConfigError(f"{name}={device!r} is not available: this machine has no CUDA device; "
                              f"available: {listed}")
        if dev.index is not None and dev.index >= len(gpus):
            raise ConfigError(f"{name}={device!r} is not available: this machine has {len(gpus)} CUDA device(s); "
                              f"available: {listed}")
        return dev
    if dev.type in avail:
        return dev
    raise ConfigError(f"{name}={device!r} is not available; choose one of {listed}")


def check_runs_dir(path: Any, name: str = "runs_dir", *, writable: bool = True) -> Any:
    """Require a usable run-store directory: an existing directory, or one that can be created.

    A path that is a file, lies under a file, or (with ``writable``) sits where this user cannot write is a
    :class:`ConfigError` naming it. Nothing is created here. Returns the path as a :class:`pathlib.Path`.
    """
    import os
    from pathlib import Path

    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ConfigError(f"{name}={path!r} must be a directory path")
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{name}={str(p)!r} is a file, not a directory; give a directory for the run store")
        if writable and not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{name}={str(p)!r} is not writable by this user")
        return p
    if not writable:
        return p
    parent = p.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{name}={str(p)!r} cannot be created: {str(parent)!r} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={str(p)!r} cannot be created: no write permission in {str(parent)!r}")
    return p


def parse_number(text: str) -> float:
    """A command-line number: a float, or a fraction such as ``8/255``."""
    import argparse
    from fractions import Fraction

    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.031 or 8/255)") from None


def normalize_norm(norm: str) -> str:
    """Map 'l2'/'L2'/'linf'/'Linf'/'LINF' to 'l2' or 'linf'; anything else is a :class:`ConfigError`."""
    if not isinstance(norm, str) or norm.lower() not in ("l2", "linf"):
        raise ConfigError(f"norm={norm!r} is not allowed; choose 'l2' or 'linf' (case-insensitive)")
    return norm.lower()


# --------------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """The scale at which the paper's recipe runs.

    Args:
        name: profile name, also the first level of the run store (``runs/<name>/``).
        dataset: dataset name understood by :func:`paperlib.data.load_dataset`.
        model: model name understood by :func:`paperlib.models.build_model`.
        batch_size: training minibatch size (global, summed over distributed ranks).
        epochs: training epochs of an undefended model ('free' AT divides them by its replay count m).
        lr, momentum, weight_decay: SGD hyper-parameters.
        milestones: epochs at which the learning rate is multiplied by ``lr_gamma``.
        lr_gamma: learning-rate decay factor at each milestone.
        train_subset: use only this many training images (seeded), ``None`` for all.
        test_subset: evaluate on this many test images (seeded), ``None`` for all.
        eval_batch_size: batch size for evaluation, attacks and bounds.
        num_workers: DataLoader workers for file-backed datasets (in-memory ones ignore it).
        n_images: images attacked / bounded / certified per model (the paper: 1000).
    """

    name: str
    dataset: str
    model: str
    batch_size: int
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...]
    lr_gamma: float
    train_subset: int | None
    test_subset: int | None
    eval_batch_size: int
    num_workers: int
    n_images: int


PROFILES: dict[str, Profile] = {
    # Seconds per notebook: what CI executes. A few hundred real Fashion-MNIST images.
    "smoke": Profile(
        name="smoke", dataset="fashion-mnist", model="fmnist-cnn", batch_size=64, epochs=1, lr=0.05,
        momentum=0.9, weight_decay=5e-4, milestones=(), lr_gamma=0.2, train_subset=512, test_subset=256,
        eval_batch_size=256, num_workers=0, n_images=16,
    ),
    # The whole paper grid on Fashion-MNIST on a 2-core CPU (the book's default), sized so the 17-model grid
    # (7-step PGD training included) runs in about two hours on 2 cores: 2 epochs (the learning rate drops after
    # the first), 60 attacked images per model (the paper: 1000; the attack suite costs seconds per image here).
    "fmnist": Profile(
        name="fmnist", dataset="fashion-mnist", model="fmnist-cnn", batch_size=128, epochs=2, lr=0.05,
        momentum=0.9, weight_decay=5e-4, milestones=(1,), lr_gamma=0.2, train_subset=None, test_subset=None,
        eval_batch_size=500, num_workers=0, n_images=60,
    ),
    # The paper's CIFAR-10 recipe (section 4; authors' code): ResNeXt-34 (2x32), 200 epochs.
    "cifar10": Profile(
        name="cifar10", dataset="cifar10", model="resnext34-2x32", batch_size=128, epochs=200, lr=0.1,
        momentum=0.9, weight_decay=5e-4, milestones=(60, 120, 160), lr_gamma=0.2, train_subset=None,
        test_subset=None, eval_batch_size=500, num_workers=4, n_images=1000,
    ),
    # ResNet-50 on ImageNet-1k; the authors used 4 GPUs and DAWNBench's 29-epoch progressive resizing.
    # Here a fixed 224 px step schedule; batch size is global (split over torchrun ranks).
    "imagenet": Profile(
        name="imagenet", dataset="imagenet", model="resnet50", batch_size=256, epochs=29, lr=0.1,
        momentum=0.9, weight_decay=1e-4, milestones=(14, 24, 27), lr_gamma=0.1, train_subset=None,
        test_subset=None, eval_batch_size=200, num_workers=8, n_images=1000,
    ),
}


def get_profile(name: str) -> Profile:
    """Return the named :class:`Profile`; unknown names raise :class:`ConfigError`."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"profile={name!r} is not allowed; choose one of {', '.join(map(repr, PROFILES))}") from None


# --------------------------------------------------------------------------------------------------
# Config <-> dict, hashing
# --------------------------------------------------------------------------------------------------

C = TypeVar("C")


#: Field metadata key: a field added after runs were stored under the config. While it keeps its default it
#: is left out of the config's dict (and so of its hash), so every run stored before the field existed keeps
#: its hash and loads; any other value is recorded and hashed like every field.
OMIT_AT_DEFAULT = "paperlib_omit_at_default"


def _omitted(config: Any, f: dataclasses.Field) -> bool:
    return bool(f.metadata.get(OMIT_AT_DEFAULT)) and getattr(config, f.name) == f.default


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not _omitted(value, f)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-serializable dict of a config dataclass (tuples become lists)."""
    if not (dataclasses.is_dataclass(config) and not isinstance(config, type)):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return _jsonable(config)


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a config dataclass from :func:`config_to_dict`'s output.

    Unknown or missing fields raise :class:`ConfigError` naming them (a malformed config file never
    half-loads). Lists are turned back into tuples where the field's default or annotation is a tuple.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"config for {cls.__name__} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} for {cls.__name__}; allowed: {sorted(fields)}")
    missing = [
        n for n, f in fields.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing field(s) {missing} for {cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        if isinstance(value, list) and "tuple" in str(fields[name].type):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - dataclass signature errors
        raise ConfigError(f"bad config for {cls.__name__}: {exc}") from None


def config_hash(config: Any, length: int = 12) -> str:
    """A stable hex digest of a config: sha256 of its canonical JSON (sorted keys).

    Two configs hash equal iff every field is equal, regardless of field order or of the Python session.
    Accepts a dataclass or a plain mapping.
    """
    data = config_to_dict(config) if not isinstance(config, Mapping) else _jsonable(config)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
