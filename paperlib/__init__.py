"""paperlib: a reference reproduction of Finlay & Oberman (2021), "Scaleable input gradient regularization
for adversarial robustness".

The public API is imported lazily (``import paperlib`` stays fast and does not pull in every module):

* :class:`paperlib.regularizers.GradientPenalty` -- the input-gradient penalty (finite differences or double
  backpropagation), a drop-in for any training loop;
* :mod:`paperlib.training` -- the training methods and engine (``TrainConfig``, ``train``, ``load_trained``);
* :mod:`paperlib.attacks` -- the attack suite and per-image best distances;
* :mod:`paperlib.bounds` -- L-bound, omega-bound, extreme-value estimates, randomized smoothing;
* :mod:`paperlib.data`, :mod:`paperlib.models`, :mod:`paperlib.runs`, :mod:`paperlib.config`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "GradientPenalty": "paperlib.regularizers",
    "TrainConfig": "paperlib.training",
    "train": "paperlib.training",
    "load_trained": "paperlib.training",
    "RunStore": "paperlib.runs",
    "Run": "paperlib.runs",
    "load_or_run": "paperlib.runs",
    "load_dataset": "paperlib.data",
    "build_model": "paperlib.models",
    "ConfigError": "paperlib.config",
    "get_profile": "paperlib.config",
    "AttackConfig": "paperlib.attacks.suite",
    "run_attack_suite": "paperlib.attacks.suite",
    "attack_model": "paperlib.attacks.suite",
    "load_suite": "paperlib.attacks.suite",
    "empirical_error": "paperlib.metrics",
    "error_curve": "paperlib.metrics",
    "BoundConfig": "paperlib.bounds",
    "run_bounds": "paperlib.bounds",
    "CertifyConfig": "paperlib.bounds",
    "run_certify": "paperlib.bounds",
    "Smooth": "paperlib.bounds",
    "reproduce": "paperlib.reproduce",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'paperlib' has no attribute {name!r}")
