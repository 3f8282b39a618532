"""The metrics of the paper's tables, once each: attack distances -> errors, and the uncertainty of the numbers.

Best distances and empirical error (paper section 4). The suite attacks each image with every attack and keeps,
per image and norm, the smallest distance of a successful adversarial (:func:`best_distances`); an image the
model misclassifies has distance 0, one that no attack broke has distance ``inf``. From those:

* :func:`empirical_error` -- % error at eps, ``100 * #{best <= eps} / #images`` (Table 1, Fig. 1);
* :func:`error_curve` -- the error-vs-eps curve on a grid of eps; :func:`error_curves` -- one per norm of a
  ``best.csv`` table on an even grid (the book's figures);
* :func:`best_values` -- the best distances of one norm as an array.

Certified error (Tables 1, B.5, B.6): from a per-image certified radius (the L-bound, the omega distance,
randomized smoothing's radius) and whether the image is classified correctly, :func:`certified_error` is the %
of images not certified at each radius. The bounds (:mod:`paperlib.bounds.stage`), randomized smoothing
(:mod:`paperlib.bounds.smoothing`) and the report all count it here.

A distance equal to eps counts as an error at eps (the closed ball), also after ``best.csv`` was written with 10
significant digits and read back (:data:`TIE_RTOL`), so every table and curve counts a tie the same way.

Every percentage the book shows is a share of ``n`` images, every mean distance a mean over them; both carry
sampling error (at 60 images one standard error of a 50% error rate is 6.5 points). This module gives them
intervals and turns a comparison into a verdict that the numbers, not the prose, decide:

* :func:`wilson_interval` -- the Wilson score interval of a proportion (good coverage at small n and near 0% or
  100%, unlike the normal approximation);
* :func:`bootstrap_interval` -- a percentile bootstrap interval of a statistic of per-image values (the mean by
  default), seeded so a page shows the same interval on every machine;
* :func:`paired_difference_interval` -- a bootstrap interval of ``stat(a) - stat(b)`` over the *same* images
  (the models of the grid are evaluated on one seeded sample, so their differences are paired);
* :func:`difference_of_proportions_interval` -- Newcombe's hybrid Wilson score interval of ``p1 - p2`` from
  counts alone (where the per-image outcomes are not stored, e.g. clean errors on the whole test set);
* :func:`ratio_interval` -- a bootstrap interval of ``mean(a) / mean(b)`` for two independent samples (e.g.
  per-epoch training seconds of two models);
* :func:`error_indicators` -- per image, whether it is an error at eps (the 0/1 outcomes behind
  :func:`empirical_error`, for paired differences);
* :func:`verdict` -- ``'holds'`` where the interval of the difference excludes the opposite of the claim,
  ``'does not hold'`` where it excludes the claim, ``'not resolved'`` otherwise.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
from scipy import stats
from torch import Tensor

from paperlib.config import ConfigError, check_int, check_nonnegative, check_probability, normalize_norm

__all__ = ["BEST_COLUMNS", "TIE_RTOL", "best_distances", "best_values", "empirical_error", "error_curve",
           "error_curves", "certified_error", "wilson_interval", "bootstrap_interval", "paired_difference_interval",
           "verdict", "VERDICTS", "error_indicators", "difference_of_proportions_interval", "ratio_interval"]

#: The three verdicts of :func:`~paperlib.metrics.verdict`.
VERDICTS = ("holds", "does not hold", "not resolved")

#: The columns of ``best.csv`` (:func:`~paperlib.metrics.best_distances`).
BEST_COLUMNS = ["image", "label", "norm", "best", "best_attack"]

#: Relative tolerance of a tie between a best distance and eps. The run store writes tables with 10 significant
#: digits (:meth:`~paperlib.runs.Run.write_table`), so a distance equal to eps can come back up to 5e-11 x eps
#: larger (at 32/255: 2e-11); 1e-9 covers that and is far below what a float32 attack resolves (6e-8).
TIE_RTOL = 1e-9

#: The linf radius the default linf curve of :func:`~paperlib.metrics.error_curves` reaches at least: the
#: paper's 8/255, with room.
_LINF_CURVE_MIN = 1.25 * 8 / 255

Best = Union[pd.DataFrame, pd.Series, np.ndarray, Tensor]


# --------------------------------------------------------------------------------------------------
# Distances -> errors
# --------------------------------------------------------------------------------------------------


def best_distances(attacks: pd.DataFrame, norms: Sequence[str] = ("l2", "linf")) -> pd.DataFrame:
    """Per image and norm, the best (smallest) distance of a successful adversarial over all rows.

    Args:
        attacks: the ``attacks.csv`` table (columns :data:`~paperlib.attacks.suite.ATTACK_COLUMNS`).
        norms: the norms to report.

    Returns:
        The ``best.csv`` table (:data:`~paperlib.metrics.BEST_COLUMNS`): image, label, norm, best (0 for
        clean-misclassified, ``inf`` when no attack succeeded), best_attack (``'<attack>-<norm>'``, ``'clean'``
        or ``'none'``), sorted by norm, image.
    """
    out = []
    if len(attacks) == 0:
        return pd.DataFrame(columns=BEST_COLUMNS)
    names = attacks["attack"].astype(str) + "-" + attacks["norm"].astype(str)
    for norm in norms:
        norm = normalize_norm(norm)
        d = attacks[f"dist_{norm}"].astype(float).where(attacks["success"].astype(bool), math.inf)
        frame = pd.DataFrame({"image": attacks["image"].values, "label": attacks["label"].values,
                              "d": d.values, "who": names.values})
        frame = frame.sort_values(["image", "d"], kind="mergesort")
        first = frame.groupby("image", sort=True).head(1)
        best_attack = np.where(first["d"].values == 0, "clean",
                               np.where(np.isinf(first["d"].values), "none", first["who"].values))
        out.append(pd.DataFrame({"image": first["image"].values, "label": first["label"].values, "norm": norm,
                                 "best": first["d"].values, "best_attack": best_attack}))
    return pd.concat(out, ignore_index=True)[BEST_COLUMNS]


def best_values(best: Best, norm: Optional[str] = None) -> np.ndarray:
    """The best distances of one norm as a float64 array ``[n_images]``.

    Args:
        best: the ``best.csv`` table (pass ``norm`` when it holds both norms), its ``best`` column, or an array of
            best distances (a tensor too).
        norm: ``'l2'`` or ``'linf'``; needed for a table of several norms.

    Raises:
        ConfigError: a table of several norms without ``norm``, or no distances at all (e.g. a norm the table does
            not hold).
    """
    if isinstance(best, pd.DataFrame):
        if "norm" in best.columns:
            present = sorted(set(best["norm"]))
            if norm is None:
                if len(present) != 1:
                    raise ConfigError(f"best holds norms {present}; pass norm='l2' or norm='linf'")
                norm = present[0]
            norm = normalize_norm(norm)
            best = best[best["norm"] == norm]
        best = best["best"]
    if isinstance(best, Tensor):
        best = best.detach().cpu().numpy()
    values = np.asarray(best, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ConfigError(f"no best distances to compute an error from{f' (norm={norm!r})' if norm else ''}")
    return values


def _broken_at(values: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """``values <= eps``, ties up to :data:`~paperlib.metrics.TIE_RTOL` counted: the one comparison of every
    error here."""
    return values <= eps * (1.0 + TIE_RTOL)


def empirical_error(best: Best, eps: float, norm: Optional[str] = None) -> float:
    """Empirical % error at ``eps``: ``100 * #{best distance <= eps} / #images`` (a tie counts,
    :data:`~paperlib.metrics.TIE_RTOL`).

    ``best`` is the ``best.csv`` table (pass ``norm`` when it holds both norms) or an array of best distances.
    """
    check_nonnegative("eps", eps)
    values = best_values(best, norm)
    return float(100.0 * np.mean(_broken_at(values, float(eps))))


def error_indicators(best: Best, eps: float, norm: Optional[str] = None) -> np.ndarray:
    """Per image, whether it is an error at ``eps`` (``best distance <= eps``, ties counted): a bool array
    ``[n_images]`` in the order of ``best`` (``best.csv`` is sorted by norm, image). Its mean times 100 is
    :func:`~paperlib.metrics.empirical_error`."""
    check_nonnegative("eps", eps)
    return _broken_at(best_values(best, norm), float(eps))


def error_curve(best: Best, eps_grid: Sequence[float], norm: Optional[str] = None) -> pd.DataFrame:
    """The error-vs-eps curve: a table with columns ``eps`` and ``error_pct`` (one row per grid point), each
    point :func:`~paperlib.metrics.empirical_error` at that eps."""
    values = best_values(best, norm)
    grid = np.asarray(list(eps_grid), dtype=np.float64)
    if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
        raise ConfigError("eps_grid must be a non-empty sequence of finite numbers >= 0")
    err = 100.0 * _broken_at(values[None, :], grid[:, None]).mean(axis=1)
    return pd.DataFrame({"eps": grid, "error_pct": err})


def error_curves(best: pd.DataFrame, n_points: int = 201, eps_max: Optional[Mapping[str, float]] = None
                 ) -> dict[str, pd.DataFrame]:
    """:func:`~paperlib.metrics.error_curve` per norm of a ``best.csv`` table, on an even grid of ``n_points``
    from 0 to ``eps_max[norm]`` (default: 1.1 x the largest finite best distance, and in linf at least 1.25 x the
    paper's 8/255). Returns ``{norm: DataFrame(eps, error_pct)}`` for the norms the table holds (l2 first)."""
    n_points = check_int("n_points", n_points, 2)
    out = {}
    for norm in [n for n in ("l2", "linf") if n in set(best["norm"])]:
        d = best_values(best, norm)
        top = (eps_max or {}).get(norm)
        if top is None:
            finite = d[np.isfinite(d)]
            top = 1.1 * float(finite.max()) if finite.size and finite.max() > 0 else 1.0
            if norm == "linf":
                top = max(top, _LINF_CURVE_MIN)
        out[norm] = error_curve(d, np.linspace(0.0, float(top), n_points))
    return out


# --------------------------------------------------------------------------------------------------
# Certified radii -> certified error
# --------------------------------------------------------------------------------------------------


def certified_error(
    radius: Tensor | np.ndarray, correct: Tensor | np.ndarray, radii: Sequence[float]
) -> dict[float, float]:
    """Certified % error at each ``r`` in ``radii``: ``100 * mean(not (correct and radius >= r))``.

    ``radius`` is a per-image certified radius (L-bound, omega distance, smoothing radius) and ``correct``
    whether the (smoothed) prediction is right; abstentions and misclassifications are errors at every r.
    For the omega distance on a grid, ``radius >= r`` implies the image is certified at ``r`` (monotonicity),
    so the value is exact at grid radii and conservative between them. Unlike an attack distance, a certified
    radius equal to ``r`` certifies ``r`` exactly: no tie tolerance.
    """
    rad = np.asarray(radius.cpu() if isinstance(radius, Tensor) else radius, dtype=np.float64)
    cor = np.asarray(correct.cpu() if isinstance(correct, Tensor) else correct, dtype=bool)
    if rad.shape != cor.shape:
        raise ConfigError(f"radius {rad.shape} and correct {cor.shape} must have the same shape")
    if rad.size == 0:
        raise ConfigError("certified error of zero images is undefined")
    return {float(r): float(100.0 * np.mean(~(cor & (rad >= r)))) for r in radii}


# --------------------------------------------------------------------------------------------------
# Intervals and verdicts
# --------------------------------------------------------------------------------------------------


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


def difference_of_proportions_interval(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95
                                       ) -> tuple[float, float, float]:
    """``(difference, low, high)`` of ``k1/n1 - k2/n2`` in percentage points: Newcombe's (1998) hybrid score
    interval (his method 10), built from the two :func:`~paperlib.metrics.wilson_interval` s.

    It treats the samples as independent. Two models scored on the same images are positively correlated, and
    then this interval is wider than a paired one (conservative); use
    :func:`~paperlib.metrics.paired_difference_interval` where the per-image outcomes are stored.

    >>> [round(v, 2) for v in difference_of_proportions_interval(56, 70, 48, 80)]
    [20.0, 5.24, 33.39]
    """
    l1, u1 = (v / 100 for v in wilson_interval(k1, n1, confidence))
    l2, u2 = (v / 100 for v in wilson_interval(k2, n2, confidence))
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return 100.0 * d, 100.0 * low, 100.0 * high


def ratio_interval(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """``(ratio, low, high)`` of ``mean(a) / mean(b)`` for two independent samples (each resampled on its
    own; percentile bootstrap, seeded). ``b`` must have a positive mean (e.g. seconds per training step)."""
    x, y = _values("a", a), _values("b", b)
    if not (y.mean() > 0):
        raise ConfigError(f"b has mean {y.mean()}; a ratio needs a positive denominator")
    check_probability("confidence", confidence)
    check_int("n_resamples", n_resamples, 100)
    rng = np.random.default_rng(seed)
    xs = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    ys = y[rng.integers(0, y.size, size=(n_resamples, y.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(xs / ys, [alpha, 1 - alpha])
    return float(x.mean() / y.mean()), float(low), float(high)
