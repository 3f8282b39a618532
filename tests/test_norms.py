"""paperlib.norms: one module for l1, l2 and linf, and the move into it changed no number (issue 16)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from paperlib import norms
from paperlib.config import ConfigError
from paperlib.norms import NORMS, get_norm, perturb_in_box
from tests.norms_reference import REFERENCE, reference_outputs

ORD = {"l1": 1, "l2": 2, "linf": math.inf}
DUAL = {"l1": "linf", "l2": "l2", "linf": "l1"}

#: Outputs that moved on purpose, each with why (every other output must be bit-identical):
#: - l2 adversarial training now takes the attacks' l2 step ``g * (s/||g||)`` and random start
#:   ``g/||g|| * (eps U^(1/N))`` instead of its own ``s * (g/||g||)`` and ``g/||g|| * U^(1/N) * eps``: the same
#:   numbers up to the order of two multiplications (last-bit rounding). No committed run trains in l2 (the paper's
#:   adversarial training is linf only), and linf training is bit-identical.
#: - ``Norm.distance`` is float64 for every input; before, a float32 input gave a float32 distance.
NOW_FLOAT64 = ("attack_norm/l2/float32/distance", "attack_norm/linf/float32/distance")

#: Float32 outputs downstream of a finite-difference quotient ``(l(x + h d) - l(x)) / h``: the quotient turns the
#: last-bit differences of two CPUs' float32 kernels into errors about ``1/h`` times larger, and a training step
#: carries them into every parameter. Measured between the recording machine and another machine of this kind
#: (2 cores, torch 2.14.1, one thread): up to 1.8e-4 of the tensor's largest magnitude (penalties of
#: ``fd/l1/forward``, parameters of ``train/fd-l2``), where the rest of the record agrees to rtol 1e-5. These are
#: compared norm-wise, ``max|new - old| <= 1e-3 max|old|`` (about five times the largest difference measured), which
#: still fails any change of the penalty's scale, norm or direction by 0.1% or more.
FD_FLOAT32_PREFIXES = ("fd/", "train/fd-")
FD_FLOAT32_RTOL = 1e-3


def _batch(n: int, shape=(2, 3), seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(dim=1)


# --------------------------------------------------------------------------------------------------
# The move changed no number
# --------------------------------------------------------------------------------------------------


def test_moving_the_norm_code_into_one_module_changed_no_number():
    """Training steps of every method, PGD-AT perturbations, ball samples, penalty and dual-norm values, ascent
    residuals, the attacks' norm operations and the margin losses, as recorded before the move (fc71b79).

    On the machine that recorded them every output was bit-identical after the move except the two kinds listed
    above. Float32 kernels differ between CPUs in the last bits, so the lasting check compares with a tolerance
    far below any real change (a wrong step order or scale moves these numbers by 1e-3 or more) instead of
    bit for bit: rtol 1e-5 for what was computed in float32 (whatever the dtype it is returned in), 1e-12 in
    float64, and 1e-3 of the largest magnitude for the float32 outputs of finite differences
    (``FD_FLOAT32_PREFIXES``).
    """
    before = torch.load(REFERENCE, weights_only=False)
    after = reference_outputs()
    assert set(after) == set(before)
    bad = []
    for key, old in before.items():
        new = after[key]
        if not isinstance(old, torch.Tensor):
            if new != old:
                bad.append(key)
            continue
        # float64 results of a float32 computation (the bounds' residuals, keyed '.../float32') round in float32
        float32 = old.dtype == torch.float32 or "/float32" in key
        if key in NOW_FLOAT64:
            ok = new.dtype == torch.float64 and old.dtype == torch.float32
            old = old.double()
            rtol, atol = 1e-6, 0.0
        else:
            ok = new.dtype == old.dtype
            rtol, atol = (1e-5, 1e-6) if float32 else (1e-12, 1e-15)
        if not old.is_floating_point():
            ok = ok and torch.equal(new, old)
        elif ok and float32 and key.startswith(FD_FLOAT32_PREFIXES):
            ok = float((new - old).abs().max()) <= FD_FLOAT32_RTOL * float(old.abs().max())
        elif not (ok and torch.allclose(new, old, rtol=rtol, atol=atol)):
            ok = False
        if not ok:
            bad.append(key)
    assert not bad, bad
    assert len(before) > 300  # the record covers every path listed in tests/norms_reference.py


# --------------------------------------------------------------------------------------------------
# The norms
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["l3", "L-inf", "", None, 2])
def test_an_unknown_norm_is_a_one_line_error_naming_the_value_and_the_allowed_norms(bad):
    with pytest.raises(ConfigError, match=r"norm=.*not allowed; choose one of 'l1', 'l2', 'linf'") as err:
        get_norm(bad)
    assert "\n" not in str(err.value) and repr(bad) in str(err.value)


def test_names_are_case_insensitive_and_the_attacks_reexport_the_same_objects():
    from paperlib.attacks import norms as attack_norms

    assert get_norm("LINF") is get_norm("linf") and get_norm("L2").name == "l2"
    assert attack_norms.get_norm is norms.get_norm and attack_norms.Norm is norms.Norm
    assert set(NORMS) == {"l1", "l2", "linf"} and set(norms.ATTACK_NORMS) == {"l2", "linf"}


@pytest.mark.parametrize("name", NORMS)
def test_distance_matches_vector_norm_in_float64(name):
    delta = _batch(7, (3, 4, 4), seed=1).float()
    d = get_norm(name).distance(delta)
    assert d.dtype == torch.float64 and d.shape == (7,)
    assert torch.equal(d, torch.linalg.vector_norm(delta.double().flatten(1), ORD[name], dim=1))
    np.testing.assert_allclose(d.numpy(), np.linalg.norm(delta.double().flatten(1).numpy(), ORD[name], axis=1),
                               rtol=1e-14)


@pytest.mark.parametrize("name", NORMS)
def test_dual_norm_pairs_satisfy_hoelders_equality_on_the_maximising_vector(name):
    """``v = direction(g)`` has ``||v|| = 1`` and ``<g, v> = ||g||_*``; every other unit ``u`` has ``<g, u> <= ||g||_*``."""
    n = get_norm(name)
    assert n.dual_name == DUAL[name] and n.dual.dual is n and norms.dual_norm_name(name.upper()) == DUAL[name]
    g = _batch(6, (3, 5), seed=2)
    g[1] = 0.0
    v = n.direction(g)
    dual = n.dual_norm(g)
    assert torch.equal(dual, torch.linalg.vector_norm(g.flatten(1), ORD[DUAL[name]], dim=1))
    torch.testing.assert_close(n.norm(v)[[0, 2, 3, 4, 5]], torch.ones(5, dtype=torch.float64), rtol=1e-15, atol=0)
    assert torch.equal(v[1], torch.zeros_like(v[1]))  # a zero gradient has a zero direction, never NaN
    torch.testing.assert_close(_inner(g, v), dual, rtol=1e-14, atol=0)
    u = n.project(_batch(6, (3, 5), seed=3, scale=10.0), 1.0)  # points of the unit ball (on its boundary)
    assert (_inner(g, u) <= dual * (1 + 1e-12)).all()
    assert (_inner(g, u) < dual * (1 - 1e-3))[[0, 2, 3, 4, 5]].all()  # and the maximiser is not one of them


@pytest.mark.parametrize("name", NORMS)
@pytest.mark.parametrize("per_sample", [False, True])
def test_projection_lands_in_the_ball_is_idempotent_and_keeps_inner_points(name, per_sample):
    n = get_norm(name)
    eps = torch.linspace(0.05, 3.0, 8, dtype=torch.float64) if per_sample else 0.7
    e = eps if per_sample else torch.full((8,), eps, dtype=torch.float64)
    y = _batch(8, (2, 3, 3), seed=4)
    y = y * (e * torch.linspace(0.3, 2.0, 8, dtype=torch.float64) / n.norm(y)).view(-1, 1, 1, 1)  # in and out
    p = n.project(y, eps)
    assert (n.norm(p) <= e * (1 + 1e-12)).all()
    outside = n.norm(y) > e
    assert outside.any() and (~outside).any()
    torch.testing.assert_close(n.norm(p)[outside], e[outside], rtol=1e-12, atol=0)  # onto the boundary
    assert torch.equal(p[~outside], y[~outside])
    torch.testing.assert_close(n.project(p, eps), p, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", NORMS)
def test_projection_is_the_closest_point_of_the_ball(name):
    """No point of the ball (random samples, and small moves of the projection along the boundary) is closer."""
    n = get_norm(name)
    y = _batch(1, (6,), seed=5, scale=2.0)
    p = n.project(y, 1.0)
    z = n.sample_ball(20000, (6,), 1.0, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    z = torch.cat([z, n.project(p + 0.01 * _batch(2000, (6,), seed=7), 1.0)])
    assert ((z - y).norm(dim=1) >= (p - y).norm() - 1e-12).all()


def test_l1_projection_equals_soft_thresholding_at_the_bisected_threshold():
    """The exact projection onto the l1 ball is ``sign(y) max(|y| - theta, 0)`` with ``theta`` solving
    ``sum max(|y| - theta, 0) = eps``; found here by bisection in float64."""
    y = _batch(5, (40,), seed=8)
    eps = torch.tensor([0.5, 1.0, 3.0, 10.0, 0.01], dtype=torch.float64)
    p = get_norm("l1").project(y, eps)
    for i in range(5):
        a = y[i].abs()
        lo, hi = 0.0, float(a.max())
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float((a - mid).clamp_min(0).sum()) > eps[i] else (lo, mid)
        torch.testing.assert_close(p[i], y[i].sign() * (a - lo).clamp_min(0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NORMS)
def test_step_has_the_requested_length_and_is_the_steepest_ascent(name):
    n = get_norm(name)
    g = _batch(5, (2, 4), seed=9)
    g[3] = 0.0
    s = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    step = n.step(g, s)
    nonzero = torch.tensor([True, True, True, False, True])
    torch.testing.assert_close(n.norm(step)[nonzero], s[nonzero], rtol=1e-14, atol=0)
    torch.testing.assert_close(_inner(g, step), s * n.dual_norm(g), rtol=1e-14, atol=0)
    assert torch.equal(step[3], torch.zeros_like(step[3]))
    torch.testing.assert_close(n.step(g, 0.3), n.step(g, torch.full((5,), 0.3, dtype=torch.float64)),
                               rtol=1e-15, atol=0)


def _radius_law_pvalue(r: np.ndarray, eps: float, dim: int) -> float:
    """``P(||v|| <= r) = (r/eps)^N`` for ``v`` uniform in the ball (the volume fraction): KS p-value."""
    return stats.kstest((r / eps) ** dim, "uniform").pvalue


@pytest.mark.parametrize("name", NORMS)
def test_sampling_stays_in_the_ball_and_covers_it_uniformly(name):
    """All three samplers: inside the ball, radius law of the uniform distribution, symmetric coordinates."""
    n, dim, eps = get_norm(name), 5, 0.7
    gen = torch.Generator().manual_seed(10)
    like = torch.zeros((4000, 1, dim), dtype=torch.float64)
    gauss = torch.randn(like.shape, generator=gen, dtype=torch.float64)
    unif = torch.rand(like.shape, generator=gen, dtype=torch.float64)
    draws = {
        "sample_ball": n.sample_ball(4000, (1, dim), eps, generator=gen, dtype=torch.float64),
        "random_start": n.random_start(like, eps, gen),
        "random_perturb": n.random_perturb(gauss, unif, eps),
    }
    for how, v in draws.items():
        r = n.norm(v).numpy()
        assert r.max() <= eps * (1 + 1e-12), how
        assert _radius_law_pvalue(r, eps, dim) > 1e-3, how
        assert stats.ttest_1samp(v.flatten(1)[:, 0].numpy(), 0.0).pvalue > 1e-3, how  # centred
    # Negative control: the same test rejects points uniform in [0, eps] along the radius.
    wrong = np.random.default_rng(0).uniform(0, eps, 4000)
    assert _radius_law_pvalue(wrong, eps, dim) < 1e-6


@pytest.mark.parametrize("name", NORMS)
def test_extreme_points_lie_on_the_unit_sphere_and_a_scalar_eps_equals_a_per_sample_eps(name):
    n = get_norm(name)
    u = n.sample_extreme(50, (2, 3), generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(n.norm(u), torch.ones(50, dtype=torch.float64), rtol=1e-15, atol=0)
    a = n.sample_ball(6, (3,), 0.5, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    b = n.sample_ball(6, (3,), torch.full((6,), 0.5), generator=torch.Generator().manual_seed(12),
                      dtype=torch.float64)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NORMS)
def test_box_diameter_is_the_distance_between_the_black_and_the_white_image(name):
    n = get_norm(name)
    shape = (1, 4, 4)
    assert n.box_diameter(shape) == pytest.approx(float(n.distance(torch.ones((1, *shape)))[0]), rel=1e-15)


def test_clipping_to_the_box_keeps_a_ball_point_in_the_ball_and_the_image_in_the_box():
    x = torch.rand((50, 1, 4, 4), generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    for name in NORMS:
        n = get_norm(name)
        v = n.sample_ball(50, (1, 4, 4), 0.8, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
        c = perturb_in_box(x, v)
        assert ((x + c) >= 0).all() and ((x + c) <= 1).all()
        assert (n.norm(c) <= n.norm(v) + 1e-15).all()
