"""Extreme-value estimates: the GEV fit recovers known quantiles; bad fits fall back to the empirical max."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from paperlib.bounds.evt import (
    GEVFit,
    batch_maxima,
    estimate_supremum,
    fit_gev,
    gev_negative_log_likelihood,
)
from paperlib.config import ConfigError


@pytest.mark.parametrize("c", [0.0, 0.3, -0.2])
def test_written_out_gev_likelihood_equals_scipy_logpdf(c):
    x = stats.genextreme.rvs(c, loc=1.0, scale=0.4, size=200, random_state=0)
    expected = -stats.genextreme.logpdf(x, c, loc=0.9, scale=0.5).sum()
    assert gev_negative_log_likelihood(x, c, 0.9, 0.5) == pytest.approx(expected, rel=1e-10)
    if c > 0:  # a point beyond the right end of the support
        assert gev_negative_log_likelihood(np.append(x, 0.9 + 0.5 / c + 1), c, 0.9, 0.5) == math.inf


@pytest.mark.parametrize("c", [0.25, -0.1])
def test_gev_fit_recovers_a_known_quantile_within_sampling_error(c):
    """Fit 400 draws of a known GEV; the fitted 0.999 quantile is within 3 sampling standard deviations of the
    truth, the standard deviation being measured by refitting 12 independent samples of the same GEV."""
    loc, scale, n, p = 2.0, 0.5, 400, 1e-3
    truth = stats.genextreme.ppf(1 - p, c, loc=loc, scale=scale)
    rng = np.random.default_rng(42)

    def fitted_quantile() -> float:
        sample = stats.genextreme.rvs(c, loc=loc, scale=scale, size=n, random_state=rng)
        fit = fit_gev(sample, tail_prob=p, floor_at_max=False)
        assert fit.method == "gev" and fit.accepted and fit.ks_pvalue > 1e-3
        return fit.quantile

    estimate = fitted_quantile()
    spread = np.std([fitted_quantile() for _ in range(12)], ddof=1)
    assert abs(estimate - truth) <= 3 * spread
    assert spread < 0.25 * (truth - loc)  # the check is not vacuous: the sampling error is small


def test_gev_fit_on_a_known_distribution_reports_its_parameters():
    sample = stats.genextreme.rvs(0.3, loc=1.0, scale=0.2, size=2000, random_state=3)
    fit = fit_gev(sample, tail_prob=0.01)
    assert fit.shape == pytest.approx(0.3, abs=0.06)
    assert fit.loc == pytest.approx(1.0, abs=0.02) and fit.scale == pytest.approx(0.2, abs=0.02)
    assert fit.upper_endpoint == pytest.approx(fit.loc + fit.scale / fit.shape)
    assert fit.value == max(fit.quantile, fit.empirical_max)


def test_rejected_fit_falls_back_to_the_empirical_maximum():
    rng = np.random.default_rng(0)
    bimodal = np.concatenate([rng.normal(0, 0.1, 250), rng.normal(5, 0.1, 250)])
    fit = fit_gev(bimodal)
    assert fit.method == "empirical-max" and not fit.accepted
    assert "Kolmogorov-Smirnov" in fit.reason and fit.ks_pvalue < 1e-3
    assert fit.value == bimodal.max()


def test_too_few_or_constant_maxima_fall_back_to_the_empirical_maximum():
    fit = fit_gev([1.0, 2.0, 3.0], min_maxima=10)
    assert fit.method == "empirical-max" and "too few" in fit.reason and fit.value == 3.0
    fit = fit_gev(np.full(50, 0.25))
    assert fit.method == "empirical-max" and "constant" in fit.reason and fit.value == 0.25


def test_batch_maxima_are_seeded_and_drop_the_incomplete_batch():
    x = np.arange(103, dtype=float)
    m = batch_maxima(x, 10, seed=1)
    assert m.shape == (10,)
    assert np.array_equal(m, batch_maxima(x, 10, seed=1))
    assert np.array_equal(batch_maxima(x, 10, shuffle=False), np.arange(9, 100, 10, dtype=float))


def test_empirical_max_method_and_the_dict_round_trip():
    fit = estimate_supremum(np.array([0.1, 0.7, 0.3]), batch_size=1, method="empirical-max")
    assert fit.value == 0.7 and fit.method == "empirical-max"
    gev = estimate_supremum(stats.genextreme.rvs(-0.1, size=300, random_state=1), batch_size=3)
    assert gev.method == "gev" and gev.n_maxima == 100 and gev.n_samples == 300
    assert GEVFit.from_dict(gev.to_dict()) == gev
    heavy = dataclasses.replace(gev, shape=-0.1, upper_endpoint=math.inf)  # inf survives JSON as 'inf'
    assert heavy.to_dict()["upper_endpoint"] == "inf" and GEVFit.from_dict(heavy.to_dict()) == heavy
    d = fit.to_dict()
    assert d["shape"] == "nan"
    back = GEVFit.from_dict(d)
    assert math.isnan(back.shape) and back.value == 0.7


@pytest.mark.parametrize("kw", [{"tail_prob": 0.0}, {"tail_prob": 1.0}, {"ks_alpha": 1.5}, {"min_maxima": 2}])
def test_bad_fit_options_are_config_errors(kw):
    with pytest.raises(ConfigError):
        fit_gev(np.arange(20.0), **kw)


def test_bad_samples_are_config_errors():
    with pytest.raises(ConfigError, match="zero samples"):
        estimate_supremum([], batch_size=1)
    with pytest.raises(ConfigError, match="NaN"):
        estimate_supremum([1.0, float("nan")], batch_size=1)
    with pytest.raises(ConfigError, match="method"):
        estimate_supremum([1.0], batch_size=1, method="max")


def test_bounded_fit_keeps_a_finite_endpoint_and_recovers_a_bounded_quantity():
    """A bounded-tail fit (reverse Weibull, shape > 0) of maxima of a bounded variable recovers its quantile; the
    free fit of a heavy-tailed sample picks a Frechet shape (shape < 0), the bounded fit a finite endpoint."""
    rng = np.random.default_rng(0)
    bounded = stats.genextreme.rvs(0.4, loc=1.0, scale=0.2, size=200, random_state=rng)
    fit = fit_gev(bounded, bounded=True)
    assert fit.shape > 0 and math.isfinite(fit.upper_endpoint)
    true_q = stats.genextreme.ppf(0.999, 0.4, loc=1.0, scale=0.2)
    assert fit.quantile == pytest.approx(true_q, rel=0.05)
    heavy = stats.genextreme.rvs(-0.8, loc=0.0, scale=0.01, size=200, random_state=np.random.default_rng(1))
    free, kept = fit_gev(heavy, ks_alpha=1e-9), fit_gev(heavy, ks_alpha=1e-9, bounded=True)
    assert free.shape < 0
    assert kept.shape > 0 and math.isfinite(kept.upper_endpoint) and kept.quantile <= kept.upper_endpoint
