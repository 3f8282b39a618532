"""Typed configuration: named profiles, config hashing and input validation.

Every experiment in paperlib is described by a frozen dataclass (``TrainConfig`` in
:mod:`paperlib.training`, ``AttackConfig`` in :mod:`paperlib.attacks.suite`, ``BoundConfig`` and
``CertifyConfig`` in :mod:`paperlib.bounds`).  This module holds what they share:

* :class:`Profile` -- the scale at which the paper's recipe is run (``smoke``, ``fmnist``, ``cifar10``,
  ``imagenet``), see DESIGN.md section 8;
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
    "normalize_norm",
]


class ConfigError(ValueError):
    """A user-facing input error. The message names the bad value and what is allowed."""


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
    """The scale at which the paper's recipe runs (DESIGN.md section 8).

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


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
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
