"""Uniform sampling in l2 and linf balls: the radius and direction laws of the uniform distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from paperlib.bounds.sampling import make_generator, perturb_in_box, sample_uniform_ball, sample_uniform_sphere
from paperlib.config import ConfigError

SHAPE = (2, 5)  # N = 10 dimensions
N = 10
EPS = 0.7
KS_LEVEL = 1e-3  # a test at level 0.001; the seeds are fixed, so the result is deterministic


def _l2_radii(v: torch.Tensor) -> np.ndarray:
    return v.reshape(v.shape[0], -1).norm(dim=1).double().numpy()


def test_l2_ball_radius_law_is_the_volume_fraction():
    """P(||v||_2 <= r) = (r / eps)^N, i.e. (||v|| / eps)^N is Uniform(0, 1)."""
    v = sample_uniform_ball(4000, SHAPE, EPS, "l2", generator=make_generator(0), dtype=torch.float64)
    r = _l2_radii(v)
    assert r.max() <= EPS + 1e-12
    assert stats.kstest((r / EPS) ** N, "uniform").pvalue > KS_LEVEL
    # Negative control: a radius uniform in [0, eps] (a common bug) is rejected by the same test.
    wrong = np.random.default_rng(0).uniform(0, EPS, 4000)
    assert stats.kstest((wrong / EPS) ** N, "uniform").pvalue < 1e-6


def test_l2_ball_direction_is_uniform_on_the_sphere():
    """For u uniform on the sphere of R^N, (u_1 + 1) / 2 ~ Beta((N-1)/2, (N-1)/2), and E[u u^T] = I / N."""
    v = sample_uniform_ball(4000, SHAPE, EPS, "L2", generator=make_generator(1), dtype=torch.float64)
    u = v.reshape(4000, -1)
    u = u / u.norm(dim=1, keepdim=True)
    for coord in (0, 7):
        t = ((u[:, coord] + 1) / 2).numpy()
        assert stats.kstest(t, stats.beta((N - 1) / 2, (N - 1) / 2).cdf).pvalue > KS_LEVEL
    second_moment = (u.T @ u / 4000).numpy()
    assert np.abs(second_moment - np.eye(N) / N).max() < 0.02  # ~5 standard errors of 1/sqrt(4000) / N scale
    s = sample_uniform_sphere(500, SHAPE, generator=make_generator(2), dtype=torch.float64)
    torch.testing.assert_close(s.reshape(500, -1).norm(dim=1), torch.ones(500, dtype=torch.float64))


def test_linf_ball_has_independent_uniform_coordinates():
    v = sample_uniform_ball(3000, SHAPE, EPS, "linf", generator=make_generator(3), dtype=torch.float64)
    flat = v.reshape(3000, -1).numpy()
    assert np.abs(flat).max() <= EPS
    for coord in (0, 9):
        assert stats.kstest(flat[:, coord], stats.uniform(-EPS, 2 * EPS).cdf).pvalue > KS_LEVEL
    # P(||v||_inf <= r) = (r / eps)^N as well.
    r = np.abs(flat).max(axis=1)
    assert stats.kstest((r / EPS) ** N, "uniform").pvalue > KS_LEVEL
    assert abs(np.corrcoef(flat[:, 0], flat[:, 1])[0, 1]) < 0.08


def test_sampling_is_seeded_and_a_per_sample_radius_scales_the_unit_ball():
    a = sample_uniform_ball(8, SHAPE, 0.5, "l2", generator=make_generator(5))
    b = sample_uniform_ball(8, SHAPE, 0.5, "l2", generator=make_generator(5))
    assert torch.equal(a, b)
    eps = torch.linspace(0.1, 0.8, 8)
    for norm in ("l2", "linf"):
        unit = sample_uniform_ball(8, SHAPE, 1.0, norm, generator=make_generator(6), dtype=torch.float64)
        per = sample_uniform_ball(8, SHAPE, eps, norm, generator=make_generator(6), dtype=torch.float64)
        torch.testing.assert_close(per, unit * eps.double().view(8, 1, 1))


def test_perturbation_clipped_to_the_box_stays_in_the_box_and_in_the_ball():
    g = make_generator(7)
    x = torch.rand(50, 1, 4, 4, generator=g)
    for norm, p in (("l2", 2), ("linf", float("inf"))):
        v = sample_uniform_ball(50, (1, 4, 4), 0.9, norm, generator=g)
        w = perturb_in_box(x, v)
        assert (x + w).min() >= 0 and (x + w).max() <= 1
        assert (w.reshape(50, -1).norm(p=p, dim=1) <= v.reshape(50, -1).norm(p=p, dim=1) + 1e-6).all()


@pytest.mark.parametrize("eps", [0.0, -0.1, float("inf"), float("nan")])
def test_nonpositive_or_nonfinite_eps_is_a_config_error(eps):
    with pytest.raises(ConfigError, match="eps"):
        sample_uniform_ball(4, SHAPE, eps, "l2", generator=make_generator(0))


def test_unknown_norm_is_a_config_error():
    with pytest.raises(ConfigError, match="norm='l1'"):
        sample_uniform_ball(4, SHAPE, 0.5, "l1", generator=make_generator(0))


def test_zero_samples_give_an_empty_batch_of_the_right_shape():
    """n = 0 is allowed (``n`` must be non-negative); the sphere sampler used to fail reshaping an empty draw."""
    for norm in ("l2", "linf"):
        v = sample_uniform_ball(0, SHAPE, 0.5, norm, generator=make_generator(8))
        assert v.shape == (0, *SHAPE)
    assert sample_uniform_sphere(0, SHAPE, generator=make_generator(8)).shape == (0, *SHAPE)
