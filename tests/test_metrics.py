"""paperlib.metrics: best distances and the errors they give (one definition for every table and curve), and
the intervals and verdicts, against scipy's independent implementations and by coverage."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import paperlib
from paperlib import metrics
from paperlib.attacks import checks, suite
from paperlib.attacks.suite import ATTACK_COLUMNS
from paperlib.config import ConfigError
from paperlib.metrics import (
    TIE_RTOL,
    best_distances,
    best_values,
    bootstrap_interval,
    empirical_error,
    error_curve,
    error_curves,
    paired_difference_interval,
    verdict,
    wilson_interval,
)
from paperlib.runs import Run


def test_best_distances_take_minimum_over_attacks_clean_is_zero_and_unbroken_is_inf():
    rows = [
        (1, 0, "pgd", "l2", True, 0.5, 0.10), (1, 0, "cw", "l2", True, 0.4, 0.20),
        (1, 0, "pgd", "linf", True, 0.9, 0.05),
        (2, 1, "pgd", "l2", True, 0.0, 0.0), (2, 1, "cw", "l2", True, 0.0, 0.0), (2, 1, "pgd", "linf", True, 0.0, 0.0),
        (3, 2, "pgd", "l2", False, math.inf, math.inf), (3, 2, "cw", "l2", False, math.inf, math.inf),
        (3, 2, "pgd", "linf", False, math.inf, math.inf),
        (4, 3, "pgd", "l2", False, math.inf, math.inf), (4, 3, "cw", "l2", True, 0.3, 0.3),
        (4, 3, "pgd", "linf", False, math.inf, math.inf),
    ]
    best = best_distances(pd.DataFrame(rows, columns=ATTACK_COLUMNS)).set_index(["norm", "image"])
    assert best.loc[("l2", 1), "best"] == 0.4 and best.loc[("l2", 1), "best_attack"] == "cw-l2"
    assert best.loc[("linf", 1), "best"] == 0.05 and best.loc[("linf", 1), "best_attack"] == "pgd-linf"
    assert best.loc[("l2", 2), "best"] == 0 and best.loc[("l2", 2), "best_attack"] == "clean"
    assert math.isinf(best.loc[("l2", 3), "best"]) and best.loc[("l2", 3), "best_attack"] == "none"
    # an l2 attack's adversarial also bounds the linf distance
    assert best.loc[("linf", 4), "best"] == 0.3 and best.loc[("linf", 4), "best_attack"] == "cw-l2"


def test_empirical_error_and_error_curve_count_best_distances():
    best = pd.DataFrame({"image": [1, 2, 3, 4, 1, 2, 3, 4], "label": [0] * 8,
                         "norm": ["l2"] * 4 + ["linf"] * 4, "best": [0.0, 0.5, 1.0, math.inf, 0, 0.1, 0.2, 0.3],
                         "best_attack": ["clean", "pgd-l2", "cw-l2", "none", "clean", "pgd-linf", "pgd-linf",
                                         "pgd-linf"]})
    assert empirical_error(best, 0.5, norm="l2") == 50.0
    assert empirical_error(best, 0.0, norm="L2") == 25.0
    assert empirical_error(best, 10.0, norm="l2") == 75.0  # the unbroken image never counts
    assert empirical_error(np.array([0.1, 0.3]), 0.2) == 50.0
    assert empirical_error(torch.tensor([0.1, 0.3], dtype=torch.float64), 0.3) == 100.0
    curve = error_curve(best, [0, 0.15, 0.25, 1], norm="linf")
    assert list(curve.columns) == ["eps", "error_pct"]
    assert curve["error_pct"].tolist() == [25.0, 50.0, 75.0, 100.0]
    with pytest.raises(ConfigError, match="norm"):
        empirical_error(best, 0.1)
    with pytest.raises(ConfigError):
        error_curve(best, [-1.0], norm="l2")


def test_a_distance_equal_to_eps_counts_at_eps_also_after_best_csv_storage(tmp_path):
    eps = np.array([2, 8, 16, 32]) / 255
    best = pd.DataFrame({"image": range(4), "label": 0, "norm": "linf", "best": eps, "best_attack": "pgd-linf"})
    run = Run(tmp_path / "attack", {"test": "ties"}).start()
    run.write_table("best.csv", best)
    stored = run.finish().read_table("best.csv")
    assert (stored["best"].to_numpy() > eps).all()  # 10 significant digits: each tie came back a hair above eps
    for i, e in enumerate(eps):
        for table in (best, stored):
            assert empirical_error(table, e) == 25.0 * (i + 1)
            assert error_curve(table, [e])["error_pct"].iloc[0] == 25.0 * (i + 1)
    # ...but a distance the attack could tell apart from eps (float32 resolves 6e-8) does not count
    assert empirical_error(np.array([8 / 255 * (1 + 1e-7)]), 8 / 255) == 0.0
    assert TIE_RTOL < 1e-7


def test_error_curves_cover_each_norm_of_best_csv_on_an_even_grid():
    best = pd.DataFrame({"image": [1, 2, 1, 2], "label": 0, "norm": ["l2", "l2", "linf", "linf"],
                         "best": [0.0, 2.0, 0.01, math.inf], "best_attack": "x"})
    curves = error_curves(best, n_points=5)
    assert list(curves) == ["l2", "linf"]
    assert curves["l2"]["eps"].tolist() == pytest.approx([0, 0.55, 1.1, 1.65, 2.2])
    assert curves["l2"]["error_pct"].tolist() == [50.0, 50.0, 50.0, 50.0, 100.0]
    assert curves["linf"]["eps"].iloc[-1] == pytest.approx(1.25 * 8 / 255)  # past the paper's 8/255
    assert error_curves(best, 3, eps_max={"l2": 1.0})["l2"]["eps"].tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ConfigError, match="n_points"):
        error_curves(best, n_points=1)
    with pytest.raises(ConfigError, match="norm='linf'"):
        best_values(best[best["norm"] == "l2"], "linf")


def test_every_metric_is_defined_once_and_reexported_where_it_was():
    for name in ("best_distances", "empirical_error", "error_curve", "BEST_COLUMNS"):
        assert getattr(suite, name) is getattr(metrics, name)
    assert paperlib.error_curve is metrics.error_curve and paperlib.empirical_error is metrics.empirical_error
    assert checks.error_curve is metrics.error_curve
    from paperlib.report import experiments

    assert experiments.error_curves is metrics.error_curves



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


def test_difference_of_proportions_matches_newcombes_worked_example_and_covers():
    # Newcombe (1998), Stat. Med. 17:873, example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339
    d, low, high = metrics.difference_of_proportions_interval(56, 70, 48, 80)
    assert d == pytest.approx(20.0) and low == pytest.approx(5.24, abs=0.01) and high == pytest.approx(33.39, abs=0.01)
    rng = np.random.default_rng(3)
    hits = []
    for _ in range(2000):
        k1, k2 = rng.binomial(200, 0.3), rng.binomial(150, 0.2)
        _, lo, hi = metrics.difference_of_proportions_interval(int(k1), 200, int(k2), 150)
        hits.append(lo <= 10.0 <= hi)
    assert 0.93 <= np.mean(hits) <= 0.975
    with pytest.raises(ConfigError, match="k=5"):
        metrics.difference_of_proportions_interval(5, 4, 1, 4)


def test_ratio_interval_is_seeded_contains_the_ratio_and_rejects_a_zero_denominator():
    rng = np.random.default_rng(4)
    a, b = rng.normal(300, 10, 12), rng.normal(100, 5, 12)
    r, lo, hi = metrics.ratio_interval(a, b)
    assert r == pytest.approx(a.mean() / b.mean()) and lo < r < hi and 2.5 < lo and hi < 3.5
    assert metrics.ratio_interval(a, b) == (r, lo, hi)
    with pytest.raises(ConfigError, match="positive denominator"):
        metrics.ratio_interval(a, [0.0, 0.0])


def test_error_indicators_average_to_the_empirical_error():
    best = pd.DataFrame({"image": [1, 2, 3, 1, 2, 3], "label": 0, "norm": ["l2"] * 3 + ["linf"] * 3,
                         "best": [0.0, 0.5, math.inf, 0.0, 0.01, 0.2], "best_attack": "x"})
    ind = metrics.error_indicators(best, 0.5, "l2")
    assert ind.tolist() == [True, True, False]
    assert 100 * ind.mean() == empirical_error(best, 0.5, "l2")
    assert metrics.error_indicators(best, 8 / 255, "linf").tolist() == [True, True, False]
