"""Uncertainty of the grid's numbers, and verdicts that follow from it.

Every percentage the book shows is a share of ``n`` images, every mean distance a mean over them; both carry
sampling error (at 60 images one standard error of a 50% error rate is 6.5 points). This module gives them
intervals and turns a comparison into a verdict that the numbers, not the prose, decide:

* :func:`wilson_interval` -- the Wilson score interval of a proportion (good coverage at small n and near 0% or
  100%, unlike the normal approximation);
* :func:`bootstrap_interval` -- a percentile bootstrap interval of a statistic of per-image values (the mean by
  default), seeded so a page shows the same interval on every machine;
* :func:`paired_difference_interval` -- a bootstrap interval of ``stat(a) - stat(b)`` over the *same* images
  (the models of the grid are evaluated on one seeded sample, so their differences are paired);
* :func:`verdict` -- ``'holds'`` where the interval of the difference excludes the opposite of the claim,
  ``'does not hold'`` where it excludes the claim, ``'not resolved'`` otherwise.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from paperlib.config import ConfigError, check_int, check_probability

__all__ = ["wilson_interval", "bootstrap_interval", "paired_difference_interval", "verdict", "VERDICTS"]

#: The three verdicts of :func:`verdict`.
VERDICTS = ("holds", "does not hold", "not resolved")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials, in percent: ``(low, high)``.

    >>> [round(v, 2) for v in wilson_interval(30, 60)]
    [37.74, 62.26]
    """
    n = check_int("n", n, 1)
    k = check_int("k", k, 0, n)
    check_probability("confidence", confidence)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def _values(name: str, values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size < 2:
        raise ConfigError(f"{name} holds {a.size} value(s); an interval needs at least 2")
    if not np.isfinite(a).all():
        raise ConfigError(f"{name} holds {int((~np.isfinite(a)).sum())} non-finite value(s); give finite distances "
                          "(an image never broken has no distance: leave it out or cap it explicitly)")
    return a


def bootstrap_interval(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean, *,
                       confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of ``statistic`` over per-image ``values``: ``(low, high)``.

    Seeded (``seed``) so that the same values give the same interval on any machine.
    """
    a = _values("values", values)
    check_probability("confidence", confidence)
    check_int("n_resamples", n_resamples, 100)
    res = stats.bootstrap((a,), lambda s, axis=-1: np.apply_along_axis(statistic, axis, s), vectorized=True,
                          confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                          random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_difference_interval(a: Sequence[float], b: Sequence[float],
                               statistic: Callable[[np.ndarray], float] = np.mean, *, confidence: float = 0.95,
                               n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """``(difference, low, high)`` of ``statistic(a) - statistic(b)`` where ``a[i]`` and ``b[i]`` belong to
    the same image: images are resampled together (a paired bootstrap, percentile interval).

    For error rates pass 0/1 indicators times 100 (``statistic`` the mean gives percentage points).
    """
    x, y = _values("a", a), _values("b", b)
    if x.shape != y.shape:
        raise ConfigError(f"paired values need one value per image in both: got {x.size} and {y.size}")
    check_probability("confidence", confidence)
    check_int("n_resamples", n_resamples, 100)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    diffs = np.array([statistic(x[i]) - statistic(y[i]) for i in idx])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return float(statistic(x) - statistic(y)), float(low), float(high)


def verdict(low: float, high: float, claim: str) -> str:
    """The verdict on a claim about a difference whose interval is ``[low, high]``.

    ``claim='positive'`` claims the difference is > 0, ``'negative'`` that it is < 0. The claim ``'holds'`` if
    the whole interval lies on its side of 0, ``'does not hold'`` if the whole interval lies on the other side
    (or at 0), and is ``'not resolved'`` if the interval contains 0.
    """
    if claim not in ("positive", "negative"):
        raise ConfigError(f"claim={claim!r} is not allowed; choose 'positive' or 'negative'")
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"[{low}, {high}] is not an interval")
    sign = 1.0 if claim == "positive" else -1.0
    lo, hi = sorted((sign * low, sign * high))
    if lo > 0:
        return "holds"
    if hi <= 0:
        return "does not hold"
    return "not resolved"
