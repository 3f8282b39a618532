"""Intervals and verdicts of paperlib.metrics, against scipy's independent implementations and by coverage."""

import numpy as np
import pytest
from scipy import stats

from paperlib.config import ConfigError
from paperlib.metrics import bootstrap_interval, paired_difference_interval, verdict, wilson_interval


@pytest.mark.parametrize("k, n", [(0, 10), (3, 60), (30, 60), (60, 60), (487, 1000)])
def test_wilson_matches_scipy(k, n):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(100 * ref.low, abs=1e-9) and high == pytest.approx(100 * ref.high, abs=1e-9)


def test_wilson_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    ks = rng.binomial(100, 0.3, size=4000)
    covered = np.mean([lo <= 30 <= hi for lo, hi in (wilson_interval(int(k), 100) for k in ks)])
    assert 0.93 <= covered <= 0.97


def test_bootstrap_interval_is_seeded_and_shrinks_with_more_images():
    rng = np.random.default_rng(1)
    small, large = rng.exponential(1.0, 60), rng.exponential(1.0, 1000)
    a = bootstrap_interval(small)
    assert a == bootstrap_interval(small)  # same values, same seed: same interval on any machine
    assert a[0] < small.mean() < a[1]
    b = bootstrap_interval(large)
    assert (b[1] - b[0]) < (a[1] - a[0]) / 2


def test_paired_difference_sees_a_shift_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(2)
    base = rng.exponential(1.0, 200)        # per-image difficulty varies a lot ...
    shifted = base + 0.05                    # ... but one model is uniformly 0.05 further
    d, low, high = paired_difference_interval(shifted, base)
    assert d == pytest.approx(0.05) and low == pytest.approx(0.05) and high == pytest.approx(0.05)
    lo_a, hi_a = bootstrap_interval(shifted)
    lo_b, hi_b = bootstrap_interval(base)
    assert lo_a < hi_b  # the unpaired intervals overlap: they could not tell the models apart
    with pytest.raises(ConfigError, match="one value per image"):
        paired_difference_interval(base, base[:10])


@pytest.mark.parametrize("low, high, claim, expected", [
    (0.5, 2.0, "positive", "holds"), (-2.0, -0.5, "positive", "does not hold"), (-1.0, 1.0, "positive", "not resolved"),
    (-2.0, -0.5, "negative", "holds"), (0.5, 2.0, "negative", "does not hold"), (-0.1, 0.3, "negative", "not resolved"),
])
def test_verdict_follows_the_interval(low, high, claim, expected):
    assert verdict(low, high, claim) == expected


def test_bad_input_is_one_clear_error():
    with pytest.raises(ConfigError, match="k=11"):
        wilson_interval(11, 10)
    with pytest.raises(ConfigError, match="non-finite"):
        bootstrap_interval([1.0, float("inf"), 2.0])
    with pytest.raises(ConfigError, match="claim='bigger'"):
        verdict(0, 1, "bigger")
