"""Randomized smoothing (Cohen et al. 2019): Clopper-Pearson bound, CERTIFY and PREDICT against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from paperlib.bounds.smoothing import (
    CertifyConfig,
    CertifyResult,
    Smooth,
    certified_error_table,
    image_generator,
    load_certify,
    lower_confidence_bound,
    max_certifiable_radius,
    run_certify,
    smoothing_envelope,
)
from paperlib.config import ConfigError
from paperlib.runs import RunStore, StaleRunError


class LinearBinary(nn.Module):
    """logits = [0, w.x + b]: class 1 iff w.x + b > 0. Under N(0, sigma^2 I) noise, P(class of x) = Phi(d/sigma)
    with d = |w.x + b| / ||w||_2 the distance to the decision boundary, so the smoothed classifier's certified
    radius sigma * Phi^-1(pA) is exactly d."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.reshape(-1).clone(), requires_grad=False)
        self.b = b
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        z = x.reshape(x.shape[0], -1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


def point_at_distance(model: LinearBinary, d: float, side: int) -> torch.Tensor:
    """A [1,4,4] point at signed distance ``side * d`` from the boundary of ``model`` (w.x + b = side*d*||w||)."""
    w = model.w.detach()
    x0 = torch.full((16,), 0.5)
    x = x0 + (side * d * w.norm() - (w @ x0 + model.b)) * w / w.norm() ** 2
    return x.reshape(1, 4, 4)


@pytest.fixture
def linear() -> LinearBinary:
    return LinearBinary(torch.randn(16, generator=torch.Generator().manual_seed(0)), b=0.1)


@pytest.mark.parametrize("NA, N, alpha", [(0, 10, 0.05), (3, 10, 0.05), (10, 10, 0.001), (881, 1000, 0.001),
                                          (50_000, 100_000, 0.001), (99_990, 100_000, 0.01)])
def test_clopper_pearson_lower_bound_agrees_with_scipy_binomtest(NA, N, alpha):
    """The one-sided (1 - alpha) bound is the lower end of the exact two-sided (1 - 2 alpha) interval."""
    expected = stats.binomtest(NA, N).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert lower_confidence_bound(NA, N, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_clopper_pearson_covers_the_true_proportion_at_its_level():
    rng = np.random.default_rng(0)
    p, n, alpha = 0.8, 200, 0.05
    lows = [lower_confidence_bound(int(k), n, alpha) for k in rng.binomial(n, p, size=400)]
    coverage = np.mean(np.array(lows) <= p)
    assert coverage >= 1 - alpha - 3 * math.sqrt(alpha * (1 - alpha) / 400)


def test_certify_radius_on_a_linear_classifier_matches_the_closed_form(linear):
    sigma, d, n, alpha = 0.25, 0.3, 20_000, 0.001
    x = point_at_distance(linear, d, side=+1)
    pA = stats.norm.cdf(d / sigma)  # closed form of the smoothed classifier's top-class probability
    smooth = Smooth(linear, num_classes=2, sigma=sigma)
    cert = smooth.certify(x, n0=100, n=n, alpha=alpha, batch_size=4096, generator=torch.Generator().manual_seed(1))
    assert cert.prediction == 1
    sd = math.sqrt(n * pA * (1 - pA))
    assert abs(cert.nA - n * pA) <= 4 * sd  # Monte-Carlo estimate of pA
    r_lo = sigma * stats.norm.ppf(lower_confidence_bound(int(n * pA - 4 * sd), n, alpha))
    r_hi = sigma * stats.norm.ppf(lower_confidence_bound(int(n * pA + 4 * sd), n, alpha))
    assert r_lo <= cert.radius <= r_hi
    assert r_hi - r_lo < 0.05 and cert.radius < d  # within Monte-Carlo error of d, and below it (1 - alpha)
    assert cert.radius == pytest.approx(sigma * stats.norm.ppf(cert.pABar))


def test_certify_far_from_the_boundary_gives_the_all_correct_closed_form(linear):
    """When every noisy sample is classified the same, pABar = alpha^(1/n) exactly."""
    sigma, n, alpha = 0.1, 5000, 0.001
    x = point_at_distance(linear, 1.5, side=-1)
    cert = Smooth(linear, 2, sigma).certify(x, 100, n, alpha, 1000)
    assert cert.prediction == 0 and cert.nA == n
    assert cert.pABar == pytest.approx(alpha ** (1 / n), rel=1e-10)
    assert cert.radius == pytest.approx(sigma * stats.norm.ppf(alpha ** (1 / n)), rel=1e-9)


def test_certify_and_predict_abstain_on_the_decision_boundary(linear):
    x = point_at_distance(linear, 0.0, side=1)
    smooth = Smooth(linear, 2, 0.5)
    cert = smooth.certify(x, 100, 4000, 0.001, 1000, generator=torch.Generator().manual_seed(3))
    assert cert.prediction == Smooth.ABSTAIN and cert.radius == 0.0 and cert.pABar < 0.5
    assert smooth.predict(x, 4000, 0.001, 1000, generator=torch.Generator().manual_seed(4)) == Smooth.ABSTAIN
    far = point_at_distance(linear, 2.0, side=1)
    assert smooth.predict(far, 1000, 0.001, 500) == 1


def test_certify_is_reproducible_from_its_generator(linear):
    x = point_at_distance(linear, 0.2, side=1)
    smooth = Smooth(linear, 2, 0.25)
    a = smooth.certify(x, 50, 3000, 0.01, 700, generator=image_generator(0, 17))
    b = smooth.certify(x, 50, 3000, 0.01, 700, generator=image_generator(0, 17))
    c = smooth.certify(x, 50, 3000, 0.01, 700, generator=image_generator(1, 17))
    assert a == b and a.nA != c.nA


def _data(linear: LinearBinary, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    dist = torch.rand(n, generator=g) * 0.6
    side = torch.tensor([1 if i % 2 else -1 for i in range(n)])
    x = torch.stack([point_at_distance(linear, float(d), int(s)) for d, s in zip(dist, side)])
    y = (side > 0).long()
    y[0] = 1 - y[0]  # one image the base classifier gets wrong
    return x, y, torch.arange(100, 100 + n)


def test_run_certify_writes_loads_back_resumes_and_does_not_depend_on_the_other_images(linear, tmp_path):
    x, y, idx = _data(linear, 5)
    cfg = CertifyConfig(sigma=0.25, n0=20, n=1500, alpha=0.001, batch_size=500, n_images=5, radii=(0.1, 0.3))
    run = RunStore(tmp_path).run("smoke", "toy", {"model": "linear"}).subrun("certify-sigma0.25", cfg)

    # Interrupted after the second image: each image costs 1 + 3 forward passes.
    class Interrupt(Exception):
        pass

    limit = {"calls": 8}
    forward = linear.forward

    def flaky(inp: torch.Tensor) -> torch.Tensor:
        if limit["calls"] == 0:
            raise Interrupt
        limit["calls"] -= 1
        return forward(inp)

    linear.forward = flaky  # type: ignore[method-assign]
    with pytest.raises(Interrupt):
        run_certify(linear, x, y, idx, cfg, run, num_classes=2, progress=False, checkpoint_every=0.0)
    assert run.status == "partial" and len(run.load_checkpoint()["rows"]) == 2
    linear.forward = forward  # type: ignore[method-assign]
    resumed = run_certify(linear, x, y, idx, cfg, run, num_classes=2, progress=False)
    assert run.status == "finished"

    fresh = run_certify(linear, x, y, idx, cfg, None, num_classes=2, progress=False)
    cols = ["image", "label", "prediction", "correct", "radius", "pABar", "nA"]
    assert resumed.table[cols].equals(fresh.table[cols])
    loaded = load_certify(run)
    pd_cols = ["image", "prediction", "correct", "nA"]
    assert loaded.table[pd_cols].equals(fresh.table[pd_cols])
    np.testing.assert_allclose(loaded.table["radius"], fresh.table["radius"], rtol=1e-9)
    assert not fresh.table["correct"].iloc[0]  # the misclassified image is an error at every radius
    assert loaded.metrics["certified_error@0.1"] == fresh.metrics["certified_error@0.1"]

    # A finished run is loaded, not recomputed.
    calls = linear.calls
    again = run_certify(linear, x, y, idx, cfg, run, num_classes=2, progress=False)
    assert linear.calls == calls and again.table["nA"].tolist() == fresh.table["nA"].tolist()

    # Image 3 certified alone gets the same certificate as inside the set (noise seeded by its index).
    alone = run_certify(linear, x[3:4], y[3:4], idx[3:4], CertifyConfig(**{**cfg.__dict__, "n_images": 1}),
                        num_classes=2, progress=False)
    assert alone.table[cols].iloc[0].tolist() == fresh.table[cols].iloc[3].tolist()

    # Other settings in the same directory: a stale run, never silently loaded.
    cfg2 = CertifyConfig(**{**cfg.__dict__, "n": 1600})
    with pytest.raises(StaleRunError, match="n: 1500 -> 1600"):
        stale = RunStore(tmp_path).run("smoke", "toy", {"model": "linear"}).subrun("certify-sigma0.25", cfg2)
        run_certify(linear, x, y, idx, cfg2, stale, num_classes=2)
    with pytest.raises(ConfigError, match="another config"):
        run_certify(linear, x, y, idx, cfg2, run, num_classes=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -0.25}, "sigma"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"n0": 200, "n": 100}, "n0=200 must not exceed n=100"),
        ({"n": 0}, "n=0"),
        ({"batch_size": 0}, "batch_size"),
        ({"radii": (0.5, -1.0)}, "radius"),
    ],
)
def test_bad_certify_config_is_a_clear_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CertifyConfig(**kwargs)


def test_bad_smoothing_arguments_are_config_errors(linear):
    with pytest.raises(ConfigError, match="sigma"):
        Smooth(linear, 2, 0.0)
    smooth = Smooth(linear, 2, 0.25)
    x = point_at_distance(linear, 0.1, 1)
    with pytest.raises(ConfigError, match="n0"):
        smooth.certify(x, 500, 100, 0.001, 100)
    with pytest.raises(ConfigError, match="alpha"):
        smooth.certify(x, 10, 100, 1.2, 100)
    with pytest.raises(ConfigError, match="alpha"):
        smooth.predict(x, 100, 0.0, 100)
    with pytest.raises(ConfigError, match="NA"):
        lower_confidence_bound(11, 10, 0.01)


@pytest.mark.parametrize("n,alpha,sigma", [(2000, 0.001, 0.25), (10_000, 0.001, 0.25), (10_000, 0.001, 0.5),
                                           (10_000, 0.001, 1.0), (100_000, 0.001, 1.0), (100, 0.05, 0.12)])
def test_largest_certifiable_radius_is_the_closed_form_at_all_correct_counts(n, alpha, sigma):
    """sigma * Phi^-1(pA_lower) with pA_lower the one-sided Clopper-Pearson bound at nA = n, which is alpha^(1/n)
    (scipy's exact two-sided interval at level 1 - 2 alpha has the same lower end). n = 2000, alpha = 0.001,
    sigma = 0.25 (the fmnist profile's certify run) gives 0.6755: no larger radius can be certified."""
    from scipy import stats as st

    from paperlib.bounds import max_certifiable_radius

    p_lower = st.binomtest(n, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert p_lower == pytest.approx(alpha ** (1 / n), rel=1e-9)
    expected = sigma * st.norm.ppf(p_lower)
    assert max_certifiable_radius(n, alpha, sigma) == pytest.approx(expected, rel=1e-9)
    if (n, alpha, sigma) == (2000, 0.001, 0.25):
        assert max_certifiable_radius(n, alpha, sigma) == pytest.approx(0.6755, abs=1e-4)
    # n - 1 of n correct already certifies less: n/n is the largest count, so this radius is the largest
    assert sigma * st.norm.ppf(lower_confidence_bound(n - 1, n, alpha)) < max_certifiable_radius(n, alpha, sigma)


def test_a_constant_classifier_is_certified_at_exactly_the_largest_certifiable_radius():
    from paperlib.bounds import max_certifiable_radius

    class Constant(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 3, dtype=x.dtype)
            out[:, 1] = 1.0
            return out

    c = Smooth(Constant(), 3, 0.25).certify(torch.rand(1, 4, 4), n0=10, n=500, alpha=0.001, batch_size=250)
    assert c.prediction == 1 and c.nA == 500
    assert c.radius == pytest.approx(max_certifiable_radius(500, 0.001, 0.25), rel=1e-12)


class RandomLinear(nn.Module):
    """A seeded float32 linear classifier with ten classes, so noise counts spread over several classes."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, 10)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(10, d, generator=torch.Generator().manual_seed(2)))
            self.lin.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("shape", [(3, 5, 5), (1, 4, 4), (1, 28, 28)])
def test_noise_counts_do_not_depend_on_the_batch_size_for_a_fixed_seed(shape):
    """Exact: the same generator seed gives the same counts for every split of the n samples into batches,
    also where C*H*W is not a multiple of 16 (3*5*5 = 75)."""
    model = RandomLinear(math.prod(shape))
    smooth = Smooth(model, 10, 0.5)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    counts = {b: smooth._sample_noise(x, 1000, b, image_generator(0, 7)) for b in (1, 7, 64, 333, 1000, 5000)}
    reference = counts[1000]
    assert reference.dtype == np.int64 and reference.sum() == 1000 and (reference > 0).sum() >= 3
    for b, c in counts.items():
        np.testing.assert_array_equal(c, reference, err_msg=f"batch_size={b}")
    certs = {b: smooth.certify(x, 50, 1000, 0.001, b, generator=image_generator(0, 7)) for b in (13, 256, 1050)}
    assert len(set(certs.values())) == 1, certs


def _results(tables: dict[float, pd.DataFrame], radii, n: int, alpha: float = 0.001) -> list[CertifyResult]:
    return [CertifyResult(table=t, certified=certified_error_table(t, radii, n=n, alpha=alpha, sigma=s),
                          metrics={"sigma": s}) for s, t in tables.items()]


def _random_table(seed: int, k: int, r_max: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    correct = rng.random(k) < 0.7
    radius = np.where(correct, rng.uniform(0, r_max, k), 0.0)
    return pd.DataFrame({"radius": radius, "correct": correct,
                         "prediction": np.where(correct, 1, Smooth.ABSTAIN)})


def test_envelope_is_the_per_radius_minimum_over_sigma_of_the_radii_each_sigma_reaches():
    n, alpha = 2000, 0.001
    sigmas = (1.0, 0.25, 0.5)  # not sorted: the envelope sorts them
    caps = {s: max_certifiable_radius(n, alpha, s) for s in sigmas}  # 0.68, 1.35, 2.70
    tables = {s: _random_table(i, 200, caps[s]) for i, s in enumerate(sigmas)}
    radii = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    env = smoothing_envelope(_results(tables, radii, n, alpha))
    assert list(env.columns) == ["radius", "sigma=0.25", "sigma=0.5", "sigma=1", "envelope", "best_sigma", "beyond_n"]
    for _, row in env.iterrows():
        r = row["radius"]
        # the raw count at each sigma (100% where the sigma cannot reach r), then the minimum
        raw = {s: 100.0 * np.mean(~(t["correct"].to_numpy() & (t["radius"].to_numpy() >= r)))
               for s, t in tables.items()}
        for s in sigmas:
            assert (np.isnan(row[f"sigma={s:g}"]) == (r > caps[s]))
            if r <= caps[s]:
                assert row[f"sigma={s:g}"] == pytest.approx(raw[s], abs=1e-12)
        if r > max(caps.values()):
            assert np.isnan(row["envelope"]) and row["beyond_n"] and np.isnan(row["best_sigma"])
        else:
            assert row["envelope"] == pytest.approx(min(raw.values()), abs=1e-12) and not row["beyond_n"]
            assert raw[row["best_sigma"]] == pytest.approx(row["envelope"], abs=1e-12)
    assert env.loc[env["radius"] == 3.0, "beyond_n"].item()  # 3.0 > 2.70: no sigma reaches it


def test_envelope_refuses_repeated_sigmas_and_different_radii():
    t = _random_table(0, 20, 0.5)
    with pytest.raises(ConfigError, match="distinct sigma"):
        smoothing_envelope(_results({0.25: t}, (0.1,), 100) * 2)
    a = _results({0.25: t}, (0.1,), 100)
    b = _results({0.5: t}, (0.2,), 100)
    with pytest.raises(ConfigError, match="same radii"):
        smoothing_envelope(a + b)


def test_a_radius_beyond_what_n_can_certify_is_flagged_not_reported_as_100_percent():
    """A constant classifier: every image certified at exactly the largest radius n allows. Just above it the
    count is 100% error for any model; the table says 'beyond n' (NaN) instead."""
    n, alpha, sigma = 500, 0.001, 0.25
    r_max = max_certifiable_radius(n, alpha, sigma)
    table = pd.DataFrame({"radius": [r_max] * 4, "correct": [True] * 4})
    cert = certified_error_table(table, (r_max / 2, r_max, r_max * 1.001, 2.0), n=n, alpha=alpha, sigma=sigma)
    assert cert["beyond_n"].tolist() == [False, False, True, True]
    assert cert["smoothing_error"].iloc[:2].tolist() == [0.0, 0.0]
    assert cert["smoothing_error"].iloc[2:].isna().all()
    assert not (cert["smoothing_error"] == 100.0).any()


def test_abstentions_count_as_errors(linear):
    """Images on the decision boundary make CERTIFY abstain: wrong at every radius and in the clean error."""
    on = torch.stack([point_at_distance(linear, 0.0, side=1) for _ in range(2)])
    far = torch.stack([point_at_distance(linear, 0.4, side=s) for s in (1, -1)])
    x, y = torch.cat([on, far]), torch.tensor([1, 0, 1, 0])
    cfg = CertifyConfig(sigma=0.2, n0=50, n=2000, batch_size=1000, n_images=4, radii=(1e-6, 0.1))
    res = run_certify(linear, x, y, torch.arange(4), cfg, num_classes=2, progress=False)
    t = res.table
    assert (t["prediction"].iloc[:2] == Smooth.ABSTAIN).all() and not t["correct"].iloc[:2].any()
    assert (t["prediction"].iloc[2:].tolist() == [1, 0]) and t["correct"].iloc[2:].all()
    # abstentions are errors whatever the label, in the clean error and at every radius
    assert res.metrics["abstain_rate"] == 50.0 and res.metrics["smoothed_error"] == 50.0
    assert res.certified["smoothing_error"].tolist() == [50.0, 50.0]


def test_certify_configs_replace_sigma_and_n_and_keep_the_base_at_its_values():
    from paperlib.bounds.smoothing import certify_configs
    from paperlib.config import config_hash

    base = CertifyConfig(sigma=0.25, n=2000, n_images=60)
    assert certify_configs(base) == [base] and certify_configs(base, sigma=0.25)[0] is base
    three = certify_configs(base, sigma=[0.25, 0.5, 1.0], n=10_000)
    assert [(c.sigma, c.n, c.n_images) for c in three] == [(0.25, 10_000, 60), (0.5, 10_000, 60), (1.0, 10_000, 60)]
    assert config_hash(three[0]) != config_hash(base)
    for bad, match in [(dict(sigma=[0.5, 0.5]), "repeats"), (dict(sigma=[]), "empty"), (dict(sigma=-1.0), "sigma=-1.0"),
                       (dict(n=50), "n0=100 must not exceed n=50"), (dict(sigma="0.5"), "sigma='0.5'")]:
        with pytest.raises(ConfigError, match=match):
            certify_configs(base, **bad)


def test_a_committed_run_from_before_the_flag_loads_with_the_radii_beyond_n_flagged():
    """runs/fmnist/undefended/certify-sigma0.25 (n = 2000) stored 100% at the six radii above 0.6755; loaded, they
    read 'beyond n' and the two certifiable radii keep their stored values."""
    from paperlib.reproduce import evaluation_configs, stage_subrun
    from tests.conftest import REPO

    run = stage_subrun(REPO / "runs" / "fmnist" / "undefended", evaluation_configs("fmnist")["certify"])
    stored = pd.read_csv(run.path / "certified_error.csv")
    assert (stored["smoothing_error"].iloc[2:] == 100.0).all()  # the old table
    result = load_certify(run)
    assert result.config == evaluation_configs("fmnist")["certify"]
    cert = result.certified
    assert cert["radius"].tolist() == stored["radius"].tolist()
    assert cert["beyond_n"].tolist() == [False, False] + [True] * 6
    np.testing.assert_allclose(cert["smoothing_error"].iloc[:2], stored["smoothing_error"].iloc[:2], rtol=1e-9)
    assert cert["smoothing_error"].iloc[2:].isna().all()
