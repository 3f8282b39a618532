"""Extreme-value estimates of a supremum (Weng et al. 2018, "CLEVER"; paper section 2.2).

The Lipschitz constant ``L`` (the supremum of the dual gradient norm of the loss) and the modulus of
continuity ``omega(eps)`` (the supremum of the first-order residual, paper eq. 5) cannot be computed; they are
estimated from samples. Following the paper:

1. split the samples into batches (seeded shuffle) and take each batch's maximum (:func:`batch_maxima`);
2. fit a generalized extreme value (GEV) distribution to the batch maxima by maximum likelihood
   (``scipy.stats.genextreme``; several starting shapes, the best likelihood wins) (:func:`fit_gev`);
3. read the estimate off the fit at the tail probability ``p``: the paper's "threshold p = 0.001" is read as
   the ``1 - p = 0.999`` quantile of the fitted distribution of a batch maximum -- the value a batch maximum
   exceeds once in a thousand batches;
4. test the fit's goodness with a one-sample Kolmogorov-Smirnov test of the maxima against the fitted GEV;
   if its p-value is below ``ks_alpha`` (default 0.001) the fit is rejected and the empirical maximum of
   all samples is used instead (as CLEVER does when its fit fails). Too few maxima (``min_maxima``) or
   identical maxima also fall back to the empirical maximum; the record says why.

Two caveats the book states: the KS p-value is computed with parameters fitted to the same data, so it is
optimistic (the test rejects less often than its nominal level); and by default the estimate is floored at
the empirical maximum (``floor_at_max``), since a supremum is never below an observed value.

scipy's shape convention: ``c > 0`` is a bounded (reverse-Weibull) upper tail with right endpoint
``loc + scale / c`` (recorded as ``upper_endpoint``), ``c = 0`` Gumbel, ``c < 0`` a heavy (Frechet) tail.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch
from scipy import stats
from scipy.optimize import minimize

from paperlib.config import ConfigError, check_probability

__all__ = ["GEVFit", "batch_maxima", "fit_gev", "estimate_supremum", "estimate_label"]


@dataclass(frozen=True)
class GEVFit:
    """An extreme-value estimate of a supremum and how it was obtained.

    Attributes:
        value: the estimate used downstream (the GEV quantile when the fit is accepted, else the empirical max).
        method: 'gev' or 'empirical-max'.
        reason: why the empirical maximum was used ('' when the fit is used).
        shape, loc, scale: fitted ``scipy.stats.genextreme`` parameters (NaN when no fit was made).
        tail_prob: ``p``; the quantile read is ``1 - p``.
        quantile: the fitted GEV's ``1 - p`` quantile (NaN when no fit was made).
        upper_endpoint: right end of the fitted support (``inf`` unless ``shape > 0``).
        empirical_max: the largest sample (over all samples, not only the maxima).
        n_samples: number of samples; n_maxima: number of batch maxima; batch_size: samples per batch.
        ks_statistic, ks_pvalue: Kolmogorov-Smirnov test of the maxima against the fit; ks_alpha: rejection level.
        accepted: whether the fit passed (``ks_pvalue >= ks_alpha``).
        seed: seed of the shuffle that formed the batches.
    """

    value: float
    method: str
    reason: str
    shape: float
    loc: float
    scale: float
    tail_prob: float
    quantile: float
    upper_endpoint: float
    empirical_max: float
    n_samples: int
    n_maxima: int
    batch_size: int
    ks_statistic: float
    ks_pvalue: float
    ks_alpha: float
    accepted: bool
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite floats become the strings 'inf', '-inf', 'nan')."""
        return {k: (repr(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GEVFit":
        """Inverse of :meth:`to_dict`."""
        fields = cls.__dataclass_fields__
        kwargs = {}
        for k, v in data.items():
            if k not in fields:
                raise ConfigError(f"unknown GEVFit field {k!r}")
            if fields[k].type in ("float", float) and isinstance(v, str):
                v = float(v)
            kwargs[k] = v
        return cls(**kwargs)


def _as_numpy(samples: Any) -> np.ndarray:
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().double().numpy()
    arr = np.asarray(samples, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ConfigError("cannot estimate a supremum from zero samples")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("samples for the extreme-value estimate contain NaN or inf")
    return arr


def batch_maxima(samples: Any, batch_size: int, *, seed: int = 0, shuffle: bool = True) -> np.ndarray:
    """Maxima of consecutive batches of ``batch_size`` samples (after a seeded shuffle).

    The ``len(samples) % batch_size`` samples left over are dropped (a smaller batch's maximum has another
    distribution). Returns an array of ``len(samples) // batch_size`` maxima.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
    arr = _as_numpy(samples)
    if shuffle:
        arr = arr[np.random.default_rng(seed).permutation(arr.size)]
    m = arr.size // batch_size
    return arr[: m * batch_size].reshape(m, batch_size).max(axis=1)


def gev_negative_log_likelihood(x: np.ndarray, c: float, loc: float, scale: float) -> float:
    """``-sum log pdf`` of ``scipy.stats.genextreme(c, loc, scale)`` at ``x``; ``inf`` outside the support.

    Written out (``log pdf = -log scale + (1/c - 1) log(1 - c s) - (1 - c s)^(1/c)``, ``s = (x - loc)/scale``;
    the Gumbel limit for ``c = 0``) because scipy's per-call overhead dominates an optimizer's many calls.
    The tests check it against ``scipy.stats.genextreme.logpdf``.
    """
    if not scale > 0:
        return math.inf
    s = (x - loc) / scale
    if abs(c) < 1e-9:
        return float(x.size * math.log(scale) + np.sum(s + np.exp(-s)))
    t = 1.0 - c * s
    if np.any(t <= 0):
        return math.inf
    log_t = np.log(t)
    value = x.size * math.log(scale) - (1.0 / c - 1.0) * np.sum(log_t) + np.sum(np.exp(log_t / c))
    return float(value) if math.isfinite(value) else math.inf


def _mle(z: np.ndarray, bounded: bool = False) -> tuple[float, float, float, float]:
    """Maximum-likelihood GEV fit of standardized data ``z``: ``(shape, loc, scale, negative log-likelihood)``.

    Nelder-Mead on ``(shape, loc, log scale)`` from several starting shapes, with ``loc``/``scale`` started at
    the Gumbel MLE; the best likelihood wins. (``scipy.stats.genextreme.fit`` alone sometimes stops at its
    starting point; this is the same likelihood, minimized more carefully.) ``bounded``: the shape is kept
    positive (``c = exp(theta_0)``), i.e. a reverse-Weibull fit with a finite right endpoint, as CLEVER fits.
    """
    def nll(theta: np.ndarray) -> float:
        c, loc, log_scale = theta
        c = math.exp(min(float(c), 50.0)) if bounded else float(c)
        return gev_negative_log_likelihood(z, c, float(loc), math.exp(float(log_scale)))

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        g_loc, g_scale = stats.gumbel_r.fit(z)
        best: tuple[float, float, float, float] | None = None
        for c0 in ((0.1, 0.25, 0.5, 1.0) if bounded else (0.0, 0.25, -0.25, 0.5)):
            # Start inside the support: 1 - c0 (z - loc) / scale > 0 for every z.
            reach = (z.max() - g_loc) if c0 > 0 else (g_loc - z.min())
            scale0 = max(g_scale, 1.5 * abs(c0) * reach)
            start = np.array([math.log(c0) if bounded else c0, g_loc, math.log(scale0)])
            if not math.isfinite(nll(start)):
                continue
            res = minimize(nll, start, method="Nelder-Mead",
                           options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 4000, "maxfev": 8000})
            c, loc, log_scale = (float(t) for t in res.x)
            if bounded:
                c = math.exp(min(c, 50.0))
            value = nll(res.x)
            if math.isfinite(value) and (best is None or value < best[3]):
                best = (c, loc, math.exp(log_scale), value)
    if best is None:
        raise RuntimeError("no GEV fit converged")
    return best


def fit_gev(
    maxima: Any,
    *,
    tail_prob: float = 1e-3,
    ks_alpha: float = 1e-3,
    min_maxima: int = 10,
    floor_at_max: bool = True,
    empirical_max: float | None = None,
    n_samples: int | None = None,
    batch_size: int = 1,
    seed: int = 0,
    bounded: bool = False,
) -> GEVFit:
    """Fit a GEV to ``maxima`` by maximum likelihood and estimate the supremum (see the module docstring).

    Args:
        maxima: batch maxima, shape ``[m]``.
        tail_prob: ``p``; the estimate is the fitted ``1 - p`` quantile.
        ks_alpha: reject the fit (use the empirical maximum) when the KS p-value is below this.
        min_maxima: fewer maxima than this -> no fit, empirical maximum.
        floor_at_max: never return less than the empirical maximum.
        empirical_max: the largest of all samples (default: the largest maximum).
        n_samples, batch_size, seed: recorded with the result.
        bounded: fit only bounded upper tails (shape > 0, reverse Weibull): for a supremum known to be finite
            (a loss with bounded values, a gradient norm of a network), a heavy (Frechet) tail is a misfit whose
            quantile can be orders of magnitude above every sample.
    """
    check_probability("tail_prob", tail_prob)
    check_probability("ks_alpha", ks_alpha)
    if isinstance(min_maxima, bool) or not isinstance(min_maxima, int) or min_maxima < 3:
        raise ConfigError(f"min_maxima={min_maxima!r} must be an integer >= 3")
    m = _as_numpy(maxima)
    emax = float(m.max()) if empirical_max is None else float(max(empirical_max, m.max()))
    nan = float("nan")
    base = dict(
        tail_prob=float(tail_prob), empirical_max=emax, n_samples=int(n_samples if n_samples is not None else m.size),
        n_maxima=int(m.size), batch_size=int(batch_size), ks_alpha=float(ks_alpha), seed=int(seed),
    )

    def fallback(reason: str, **fit: float) -> GEVFit:
        params = dict(shape=nan, loc=nan, scale=nan, quantile=nan, upper_endpoint=nan, ks_statistic=nan, ks_pvalue=nan)
        params.update(fit)
        return GEVFit(value=emax, method="empirical-max", reason=reason, accepted=False, **params, **base)

    if m.size < min_maxima:
        return fallback(f"too few batch maxima ({m.size} < {min_maxima})")
    mean, std = float(m.mean()), float(m.std())
    if not std > 1e-12 * max(1.0, abs(mean)):
        return fallback("batch maxima are (numerically) constant")
    z = (m - mean) / std
    try:
        c, loc_z, scale_z, _ = _mle(z, bounded=bounded)
    except RuntimeError as exc:
        return fallback(str(exc))
    loc, scale = mean + std * loc_z, std * scale_z
    ks = stats.kstest(m, stats.genextreme.cdf, args=(c, loc, scale))
    quantile = float(stats.genextreme.ppf(1.0 - tail_prob, c, loc=loc, scale=scale))
    endpoint = float(loc + scale / c) if c > 0 else float("inf")
    fit = dict(shape=c, loc=loc, scale=scale, quantile=quantile, upper_endpoint=endpoint,
               ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue))
    if not ks.pvalue >= ks_alpha:
        return fallback(f"GEV fit rejected by Kolmogorov-Smirnov (p={ks.pvalue:.2g} < {ks_alpha:g})", **fit)
    if not math.isfinite(quantile):
        return fallback("fitted quantile is not finite", **fit)
    value = max(quantile, emax) if floor_at_max else quantile
    return GEVFit(value=float(value), method="gev", reason="", accepted=True, **fit, **base)


def estimate_supremum(
    samples: Any,
    *,
    batch_size: int,
    tail_prob: float = 1e-3,
    ks_alpha: float = 1e-3,
    min_maxima: int = 10,
    floor_at_max: bool = True,
    seed: int = 0,
    method: str = "evt",
    bounded: bool = False,
) -> GEVFit:
    """Estimate ``sup`` of the quantity sampled in ``samples`` (shape ``[n]``) (``bounded``: see :func:`fit_gev`).

    ``method='evt'``: batch maxima of ``batch_size`` samples -> :func:`fit_gev`. ``method='empirical-max'``:
    the largest sample (what the authors' code used for ``L``).
    """
    if method not in ("evt", "empirical-max"):
        raise ConfigError(f"method={method!r} is not allowed; choose 'evt' or 'empirical-max'")
    arr = _as_numpy(samples)
    if method == "empirical-max":
        nan = float("nan")
        return GEVFit(
            value=float(arr.max()), method="empirical-max", reason="requested", shape=nan, loc=nan, scale=nan,
            tail_prob=float(tail_prob), quantile=nan, upper_endpoint=nan, empirical_max=float(arr.max()),
            n_samples=int(arr.size), n_maxima=0, batch_size=int(batch_size), ks_statistic=nan, ks_pvalue=nan,
            ks_alpha=float(ks_alpha), accepted=False, seed=int(seed),
        )
    maxima = batch_maxima(arr, batch_size, seed=seed)
    return fit_gev(
        maxima, tail_prob=tail_prob, ks_alpha=ks_alpha, min_maxima=min_maxima, floor_at_max=floor_at_max,
        empirical_max=float(arr.max()), n_samples=int(arr.size), batch_size=batch_size, seed=seed, bounded=bounded,
    )


def estimate_label(fit: GEVFit | dict[str, Any]) -> str:
    """How an estimate was obtained, in words: 'EVT accepted' (the GEV fit passed its KS test and gave the
    value), 'empirical-max fallback: <reason>' (a fit was asked for but not used), or 'empirical max
    (requested)' (the config asked for the largest sample)."""
    d = fit.to_dict() if isinstance(fit, GEVFit) else fit
    if d.get("method") == "gev":
        return "EVT accepted"
    if d.get("reason") == "requested":
        return "empirical max (requested)"
    return f"empirical-max fallback: {d.get('reason', '')}"
