"""Proposition 2.2: per-image statistics, L-bound, omega(eps), the omega-bound and certified error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from paperlib.bounds import (
    BoundConfig,
    certified_error,
    first_order_residuals,
    image_statistics,
    l_bound,
    make_generator,
    omega_bound_certified,
    omega_distance,
    regularity_statistics,
    run_bounds,
    sample_uniform_ball,
)
from paperlib.bounds.sampling import perturb_in_box
from paperlib.config import ConfigError
from paperlib.losses import logit_margin_loss


def linear_binary_model(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A float64 two-class linear model on 1x4x4 inputs; returns it and w_d = w_1 - w_0."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, 16, generator=g, dtype=torch.float64) * 0.5)
        model[1].bias.zero_()
        wd = model[1].weight[1] - model[1].weight[0]
        model[1].bias[1] = -(wd.sum() * 0.5)  # decision boundary through the centre of the box
    return model, (model[1].weight[1] - model[1].weight[0]).detach().clone()


def images(n: int, seed: int, shape=(1, 4, 4)) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def tiny_mlp(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, classes)).double()


# --------------------------------------------------------------------------------------------------
# Per-image statistics
# --------------------------------------------------------------------------------------------------


def test_gradient_norms_of_a_linear_model_are_the_dual_norms_of_its_weight_difference():
    model, wd = linear_binary_model()
    x = images(20, 1)
    y = torch.randint(0, 2, (20,), generator=torch.Generator().manual_seed(2))
    s = image_statistics(model, x, y, loss_fn=logit_margin_loss, batch_size=7)
    torch.testing.assert_close(s.grad_norm_l2, wd.norm().expand(20))
    torch.testing.assert_close(s.grad_norm_l1, wd.abs().sum().expand(20))
    torch.testing.assert_close(s.grad_norm("linf"), s.grad_norm_l1)
    assert torch.equal(s.correct, s.prediction == y)


def test_statistics_do_not_depend_on_the_batch_and_leave_inputs_and_mode_alone():
    model = tiny_mlp()
    model.train()
    x = images(13, 3)
    x0 = x.clone()
    y = torch.randint(0, 3, (13,), generator=torch.Generator().manual_seed(4))
    whole = image_statistics(model, x, y, batch_size=13)
    for bs in (1, 5):
        part = image_statistics(model, x, y, batch_size=bs)
        for name in ("loss", "grad_norm_l2", "grad_norm_l1"):
            torch.testing.assert_close(getattr(part, name), getattr(whole, name))
    assert torch.equal(x, x0) and model.training
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# L-bound, omega-bound, bisection, certified error
# --------------------------------------------------------------------------------------------------


def test_l_bound_is_the_loss_gap_over_L_and_zero_when_misclassified():
    loss = torch.tensor([-0.5, -0.1, 0.0, 0.3], dtype=torch.float64)
    torch.testing.assert_close(l_bound(loss, 2.0), torch.tensor([0.25, 0.05, 0.0, 0.0], dtype=torch.float64))
    assert l_bound(loss, 0.0).tolist() == [float("inf"), float("inf"), 0.0, 0.0]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_for_an_exactly_linear_loss_omega_is_zero_and_the_bounds_equal_the_distance_to_the_boundary(norm):
    model, wd = linear_binary_model()
    n = 30
    x = images(n, 5)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[:4] = 1 - y[:4]  # four misclassified images
    dual = wd.norm() if norm == "l2" else wd.abs().sum()
    exact = ((model(x)[:, 1] - model(x)[:, 0]).abs() / dual).detach()  # distance to the decision hyperplane
    exact[:4] = 0.0
    eps_max = float(exact.max()) * 1.1
    cfg = BoundConfig(norm=norm, n_images=n, loss="logit-margin", omega_samples=3, grid_size=400, eps_max=eps_max,
                      radii=(eps_max / 4, eps_max / 2), batch_size=16, lipschitz_batch=3)
    res = run_bounds(model, x, y, torch.arange(n), cfg, progress=False)

    omega = np.array([e["omega"] for e in res.evt["omega"]])
    assert np.abs(omega).max() < 1e-12  # the first-order expansion is exact
    spacing = eps_max / 400
    d = torch.tensor(res.table["omega_distance"].to_numpy())
    assert (d <= exact + 1e-9).all() and (d > exact - spacing - 1e-9).all()
    assert (d[:4] == 0).all()
    # The omega-bound test itself is exact: certified just below the distance, not just above.
    loss = torch.tensor(res.table["loss"].to_numpy())
    gnorm = torch.tensor(res.table["grad_norm"].to_numpy())
    ok = exact > 0
    for i in torch.nonzero(ok).flatten().tolist():
        assert omega_bound_certified(loss[i:i + 1], gnorm[i:i + 1], 0.0, float(exact[i]) * (1 - 1e-7)).item()
        assert not omega_bound_certified(loss[i:i + 1], gnorm[i:i + 1], 0.0, float(exact[i]) * (1 + 1e-7)).item()
    # L is the (constant) gradient norm, so the L-bound is the exact distance too, for both estimates of L.
    for col in ("l_bound", "l_bound_evt", "l_bound_empirical_max"):
        np.testing.assert_allclose(res.table[col].to_numpy(), exact.numpy(), rtol=1e-9, atol=1e-12)


def test_bisection_finds_the_largest_certified_grid_radius():
    g = torch.Generator().manual_seed(0)
    loss = torch.rand(200, generator=g, dtype=torch.float64) * 1.2 - 1.0
    gnorm = torch.rand(200, generator=g, dtype=torch.float64) * 3
    gnorm[:5] = 0.0
    grid = np.linspace(0.05, 1.0, 20)
    omega = np.cumsum(np.random.default_rng(0).uniform(0, 0.03, 20))
    dist = omega_distance(loss, gnorm, grid, omega)
    for i in range(200):
        certified = [k for k in range(20)
                     if omega_bound_certified(loss[i:i + 1], gnorm[i:i + 1], omega[k], grid[k]).item()]
        expected = grid[max(certified)] if certified else 0.0
        assert dist[i].item() == expected
        if certified:  # the test is monotone along the grid: certified exactly up to the largest one
            assert certified == list(range(max(certified) + 1))


def test_certified_error_counts_misclassified_and_abstained_images_as_errors_at_every_radius():
    radius = np.array([0.0, 0.3, 0.6, 1.0, 2.0])
    correct = np.array([True, True, True, False, True])
    err = certified_error(radius, correct, [0.25, 0.5, 1.0, 1.5])
    assert err == {0.25: 40.0, 0.5: 60.0, 1.0: 80.0, 1.5: 80.0}


# --------------------------------------------------------------------------------------------------
# omega(eps) on a curved model
# --------------------------------------------------------------------------------------------------


def test_first_order_residual_equals_its_definition_for_the_sampled_perturbations():
    model = tiny_mlp()
    x = images(6, 7)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    res = first_order_residuals(model, x, y, 0.4, "l2", n_samples=3, generator=make_generator(11),
                                loss_fn=logit_margin_loss, batch_size=4)
    assert res.shape == (6, 3)
    # Recompute sample (image 0, draw 0) and (image 4, draw 1) by hand with the same generator stream.
    gen = make_generator(11)
    draws = {}
    for s, b in ((0, 4), (4, 2)):
        for j in range(3):
            draws[(s, j)] = sample_uniform_ball(b, (1, 4, 4), 0.4, "l2", generator=gen, dtype=torch.float64)
    for (i, j, s) in ((0, 0, 0), (4, 1, 4)):
        v = perturb_in_box(x[i], draws[(s, j)][i - s])
        xi = x[i:i + 1].clone().requires_grad_(True)
        li = logit_margin_loss(model(xi), y[i:i + 1])
        (gi,) = torch.autograd.grad(li.sum(), xi)
        expected = logit_margin_loss(model(x[i:i + 1] + v), y[i:i + 1]) - li - (v * gi).sum()
        assert res[i, j].item() == pytest.approx(expected.item(), abs=1e-12)
        assert float(v.norm()) <= 0.4 + 1e-12


def test_omega_estimates_are_nonnegative_nondecreasing_and_consistent_with_the_distances():
    model = tiny_mlp(seed=1)
    n = 24
    x = images(n, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    cfg = BoundConfig(n_images=n, omega_samples=4, grid_size=6, eps_max=1.5, radii=(0.5,), omega_method="empirical-max",
                      batch_size=8, lipschitz_batch=2)
    res = run_bounds(model, x, y, torch.arange(n), cfg, progress=False)
    omega = [e["omega"] for e in res.evt["omega"]]
    raw = [e["omega_raw"] for e in res.evt["omega"]]
    grid = [e["eps"] for e in res.evt["omega"]]
    assert grid == sorted(grid) and 0.5 in grid and 1.0 in grid  # Table B.3 radii are on the l2 grid
    assert min(omega) >= 0 and all(a <= b for a, b in zip(omega, omega[1:]))
    assert all(o >= r for o, r in zip(omega, raw)) and max(raw) > 0  # a curved loss has a positive residual
    loss = torch.tensor(res.table["loss"].to_numpy())
    gnorm = torch.tensor(res.table["grad_norm"].to_numpy())
    for i, d in enumerate(res.table["omega_distance"]):
        k = grid.index(d) if d > 0 else -1
        if k >= 0:
            assert omega_bound_certified(loss[i:i + 1], gnorm[i:i + 1], omega[k], d).item()
        if k + 1 < len(grid):
            assert not omega_bound_certified(loss[i:i + 1], gnorm[i:i + 1], omega[k + 1], grid[k + 1]).item()
    reg = regularity_statistics(image_statistics(model, x, y), {0.5: omega[grid.index(0.5)]})
    assert reg["grad_norm_max"] >= reg["grad_norm_mean"] > 0 and reg["omega(0.5)"] == omega[grid.index(0.5)]
    assert res.metrics["regularity"]["omega(0.5)"] == omega[grid.index(0.5)]
    assert set(res.certified["radius"]) == {0.5}


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"norm": "l1"}, "norm='l1'"),
        ({"eps_max": 0.0}, "eps_max"),
        ({"eps_max": -1.0}, "eps_max"),
        ({"radii": (0.5, 0.0)}, "radius"),
        ({"radii": ()}, "radii"),
        ({"tail_prob": 1.0}, "tail_prob"),
        ({"ks_alpha": 0.0}, "ks_alpha"),
        ({"lipschitz": "max"}, "lipschitz"),
        ({"omega_samples": 0}, "omega_samples"),
        ({"loss": "ce"}, "loss"),
        ({"n_images": 0}, "n_images"),
    ],
)
def test_bad_bound_config_is_a_clear_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BoundConfig(**kwargs)


def test_norm_names_are_case_insensitive():
    assert BoundConfig(norm="Linf").norm == "linf" and BoundConfig(norm="L2").norm == "l2"


def test_bad_eps_and_mismatched_inputs_are_config_errors():
    loss, g = torch.zeros(3), torch.ones(3)
    with pytest.raises(ConfigError, match="eps"):
        omega_bound_certified(loss, g, 0.0, 0.0)
    with pytest.raises(ConfigError, match="eps"):
        first_order_residuals(tiny_mlp(), images(2, 0), torch.tensor([0, 1]), -0.5, "l2", n_samples=1,
                              generator=make_generator(0))
    with pytest.raises(ConfigError, match="n_images=5"):
        run_bounds(tiny_mlp(), images(4, 0), torch.zeros(4, dtype=torch.long), torch.arange(4), BoundConfig(n_images=5))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        run_bounds(tiny_mlp(), images(4, 0) * 3, torch.zeros(4, dtype=torch.long), torch.arange(4),
                   BoundConfig(n_images=4))
    with pytest.raises(ConfigError, match="non-decreasing"):
        omega_distance(loss, g, [0.1, 0.2], [0.2, 0.1])
