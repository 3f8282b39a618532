"""Tests of the input-gradient penalty (paperlib.regularizers): FD against the exact double backprop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from paperlib.config import ConfigError
from paperlib.regularizers import (
    GradientPenalty,
    double_backprop_penalty,
    dual_norm,
    fd_direction,
    finite_difference_penalty,
    frozen_batchnorm_stats,
    penalty_coefficient,
)


def small_cnn(bn: bool = False, act: type[nn.Module] = nn.ReLU, dtype=torch.float64,
              pool: type[nn.Module] = nn.MaxPool2d) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [act(), pool(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [act(), nn.Linear(16, 5)]
    return nn.Sequential(*layers).to(dtype)


def batch(n: int = 6, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(5, (n,), generator=g)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def param_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_fd_penalty_matches_double_backprop_in_float64(norm):
    model = small_cnn()
    x, y = batch()
    fd = finite_difference_penalty(model, x, y, norm=norm, h=1e-6)
    dbp = double_backprop_penalty(model, x, y, norm=norm)
    assert rel_err(fd.penalties, dbp.penalties) < 1e-3
    assert torch.allclose(fd.grad_norms, dbp.grad_norms)
    # The parameter gradients (what training uses) agree too: d held fixed, (grad_w l(x+hd) - grad_w l(x))/h
    # -> d . grad_w g, which is what double backprop differentiates.
    gp_fd = param_grad(model, fd.penalties.mean())
    gp_dbp = param_grad(model, dbp.penalties.mean())
    assert rel_err(gp_fd, gp_dbp) < 1e-3


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_fd_matches_double_backprop_on_batchnorm_model_in_eval_mode(norm):
    model = small_cnn(bn=True)
    model.train()
    x, y = batch(16)
    with torch.no_grad():
        model(x)  # give the running statistics non-trivial values
    model.eval()
    fd = finite_difference_penalty(model, x, y, norm=norm, h=1e-6)
    dbp = double_backprop_penalty(model, x, y, norm=norm)
    assert rel_err(fd.penalties, dbp.penalties) < 1e-3
    assert rel_err(param_grad(model, fd.penalties.mean()), param_grad(model, dbp.penalties.mean())) < 1e-3


@pytest.mark.parametrize("method", ["fd", "dbp"])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_batch_penalty_equals_mean_of_per_example_penalties(method, norm):
    model = small_cnn()
    x, y = batch(5)
    pen = GradientPenalty(norm=norm, method=method, lam=1.0, h=1e-3)
    whole = pen(model, x, y)
    singles = [pen(model, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]
    for field in ("loss", "clean_loss", "penalty", "grad_norm"):
        mean = torch.stack([getattr(s, field).detach() for s in singles]).mean()
        assert torch.allclose(getattr(whole, field).detach(), mean, rtol=1e-10, atol=0), field


class ZeroOnSomeRows(nn.Module):
    """Logits W relu(x - 0.5): inputs in [0, 0.5) have zero input gradient; inputs at 0.9 do not (h = 0.01 keeps
    the finite-difference step on the same side of the kink)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3).double()

    def forward(self, x):
        return self.fc(torch.relu(x - 0.5).flatten(1))


@pytest.mark.parametrize("method", ["fd", "dbp"])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_zero_input_gradient_gives_zero_direction_and_no_nan(method, norm):
    model = ZeroOnSomeRows()
    x = torch.cat([torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.9)]).double()
    y = torch.tensor([0, 1, 2, 0])
    t = GradientPenalty(norm=norm, method=method, lam=1.0).terms(model, x, y)
    assert torch.all(t.grad_norms[:2] == 0) and torch.all(t.grad_norms[2:] > 0)
    if method == "fd":
        assert torch.all(t.direction[:2] == 0)
        assert torch.all(t.direction[2:].flatten(1).norm(dim=1).sub(1).abs() < 1e-12)
    out = GradientPenalty(norm=norm, method=method, lam=1.0)(model, x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(out.penalty) and torch.isfinite(out.grad_norm)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # A batch whose gradients are all zero.
    d = fd_direction(torch.zeros(3, 2, 2), norm)
    assert torch.equal(d, torch.zeros(3, 2, 2))


class RecordBackwardGradMode(torch.autograd.Function):
    """Identity whose backward records whether autograd is building a graph of the backward itself."""

    record: list[bool] = []

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        RecordBackwardGradMode.record.append(torch.is_grad_enabled())
        return grad


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small_cnn(act=nn.Tanh)

    def forward(self, x):
        return self.net(RecordBackwardGradMode.apply(x))


def test_fd_direction_is_detached_and_no_second_order_graph_is_built():
    model = Probe()
    x, y = batch()
    RecordBackwardGradMode.record = []
    out_fd = GradientPenalty(norm="l2", method="fd", lam=1.0)
    t = out_fd.terms(model, x, y)
    assert not t.direction.requires_grad and t.direction.grad_fn is None
    assert not t.grad_norms.requires_grad
    t.penalties.mean().backward()
    # The input-gradient pass and the final backward both ran without building a graph of the backward.
    assert RecordBackwardGradMode.record and not any(RecordBackwardGradMode.record)
    # Double backprop does build one (so this probe can tell the two apart).
    RecordBackwardGradMode.record = []
    GradientPenalty(norm="l2", method="dbp", lam=1.0).terms(model, x, y)
    assert any(RecordBackwardGradMode.record)


@pytest.mark.parametrize("method,scheme,forwards", [("fd", "forward", 2), ("fd", "central", 3), ("dbp", "forward", 1)])
def test_fd_reuses_the_clean_forward(method, scheme, forwards):
    model = small_cnn()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    x, y = batch()
    out = GradientPenalty(norm="l2", method=method, scheme=scheme, lam=1.0)(model, x, y)
    out.loss.backward()
    assert len(calls) == forwards


def test_penalty_leaves_the_input_untouched():
    model = small_cnn()
    x, y = batch()
    x0 = x.clone()
    for method in ("fd", "dbp"):
        GradientPenalty(method=method, lam=1.0)(model, x, y).loss.backward()
    assert torch.equal(x, x0) and x.grad is None and not x.requires_grad


def test_central_differences_are_more_accurate_than_forward_differences():
    model = small_cnn(act=nn.Tanh, pool=nn.AvgPool2d)  # smooth, so the Taylor orders show
    x, y = batch()
    exact = double_backprop_penalty(model, x, y).penalties
    fwd = finite_difference_penalty(model, x, y, h=0.05, scheme="forward").penalties
    cen = finite_difference_penalty(model, x, y, h=0.05, scheme="central").penalties
    assert rel_err(cen, exact) < 0.2 * rel_err(fwd, exact)


def test_bn_guard_keeps_running_statistics_as_in_a_standard_step():
    x, y = batch(16)
    ref = small_cnn(bn=True)
    ref(x)  # a standard step's forward
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    guarded, unguarded = small_cnn(bn=True), small_cnn(bn=True)
    GradientPenalty(norm="l2", lam=1.0, bn_guard=True)(guarded, x, y)
    GradientPenalty(norm="l2", lam=1.0, bn_guard=False)(unguarded, x, y)
    for k, v in guarded.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    diffs = [k for k, v in unguarded.state_dict().items() if not torch.equal(v, ref_state[k])]
    assert any("running_mean" in k for k in diffs) and any("num_batches_tracked" in k for k in diffs)
    # The guard restores momentum.
    assert all(m.momentum == 0.1 for m in guarded.modules() if isinstance(m, nn.BatchNorm2d))
    with frozen_batchnorm_stats(guarded):
        assert all(m.momentum == 0.0 for m in guarded.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_scale_conventions(norm):
    model = small_cnn()
    x, y = batch()
    outs = {s: GradientPenalty(norm=norm, lam=0.5, scale=s)(model, x, y) for s in ("eq8", "algorithm1", "eq8-literal")}
    reg = {s: float((o.loss - o.clean_loss).detach()) for s, o in outs.items()}
    pen = float(outs["eq8"].penalty)
    assert reg["eq8"] == pytest.approx(0.25 * pen, rel=1e-12)
    assert reg["algorithm1"] == pytest.approx(0.5 * pen, rel=1e-12)
    n = x[0].numel()
    assert reg["eq8-literal"] == pytest.approx(0.25 * pen * (n if norm == "l1" else 1), rel=1e-12)


def test_l1_penalty_estimates_squared_l1_norm_over_n():
    model = small_cnn()
    x, y = batch()
    t = double_backprop_penalty(model, x, y, norm="l1")
    assert torch.allclose(t.penalties, t.grad_norms.pow(2) / x[0].numel())
    d = fd_direction(torch.randn(3, 1, 8, 8, dtype=torch.float64), "l1")
    assert torch.allclose(d.abs(), torch.full_like(d, 1 / math.sqrt(64)))


def test_attack_norm_selects_the_dual_penalty_norm():
    assert GradientPenalty(attack_norm="linf").norm == "l1"
    assert GradientPenalty(attack_norm="L2").norm == "l2"
    assert GradientPenalty(norm="L1").norm == "l1"
    assert dual_norm("Linf") == "l1"
    with pytest.raises(ConfigError, match="dual"):
        GradientPenalty(norm="linf")
    with pytest.raises(ConfigError, match="contradicts"):
        GradientPenalty(norm="l2", attack_norm="linf")
    with pytest.raises(ConfigError, match=r"attack_norm='l1' is not allowed; choose 'l2' or 'linf'"):
        dual_norm("l1")  # l1 is a norm (paperlib.norms) but no attack norm of the paper


def test_fd_direction_is_the_attack_norms_steepest_ascent_direction_at_unit_l2_length():
    """l2 penalty: ``g/||g||_2``, the l2 steepest ascent; l1 penalty: ``sign g / sqrt(N)``, the linf steepest ascent
    (a corner of the box) scaled to unit l2 length. Either way ``<g, d> = ||g||_* / ||direction||_2``."""
    from paperlib.norms import get_norm

    g = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for norm, attack in (("l2", "l2"), ("l1", "linf")):
        d = fd_direction(g, norm)
        torch.testing.assert_close(d.flatten(1).norm(dim=1), torch.ones(4, dtype=torch.float64), rtol=1e-14, atol=0)
        inner = (g * d).flatten(1).sum(dim=1)
        dual = get_norm(attack).dual_norm(g)
        torch.testing.assert_close(inner, dual / (math.sqrt(64) if norm == "l1" else 1.0), rtol=1e-14, atol=0)


def test_the_literal_eq8_scale_of_a_bad_penalty_norm_is_a_config_error():
    with pytest.raises(ConfigError, match="norm='linf' is not a penalty norm"):
        penalty_coefficient(1.0, "eq8-literal", "linf", 784)


@pytest.mark.parametrize("kwargs,match", [
    ({"lam": -1.0}, "lam"), ({"h": 0.0}, "h"), ({"h": -0.1}, "h"), ({"norm": "l3"}, "norm"),
    ({"method": "exact"}, "method"), ({"scheme": "backward"}, "scheme"), ({"scale": "half"}, "scale"),
    ({"lam": float("nan")}, "lam"),
])
def test_bad_penalty_arguments_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GradientPenalty(**kwargs)


def test_drop_in_usage_and_lam_zero_is_standard_training():
    model = small_cnn(dtype=torch.float32)
    x, y = batch(dtype=torch.float32)
    penalty = GradientPenalty(norm="l2", lam=1.0, h=0.01)
    out = penalty(model, x, y); out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert float(out.loss.detach()) > float(out.clean_loss) and float(out.grad_norm) > 0
    # lam = 0 is plain cross-entropy. The penalty evaluates x and x + h d in one forward of 2B images, and float32
    # kernels may round a 2B batch differently from a B batch in the last bit (measured 2.4e-7 on one machine of
    # this kind, 0 on another), so float32 is compared to 1e-6.
    zero = GradientPenalty(norm="l2", lam=0.0)(model, x, y)
    assert torch.allclose(zero.loss, nn.functional.cross_entropy(model(x), y), rtol=1e-6, atol=0)
    # In float64 the loss is the mean of the per-image cross-entropies, bit for bit. cross_entropy's own 'mean'
    # reduction sums in another order (measured 2.2e-16 apart, one ulp of 1.64), so it is compared to 1e-14.
    model64 = small_cnn(dtype=torch.float64)
    x64, y64 = batch(dtype=torch.float64)
    zero64 = GradientPenalty(norm="l2", lam=0.0)(model64, x64, y64)
    logits64 = model64(x64)
    assert torch.equal(zero64.loss, nn.functional.cross_entropy(logits64, y64, reduction="none").mean())
    assert torch.allclose(zero64.loss, nn.functional.cross_entropy(logits64, y64), rtol=1e-14, atol=0)


def grouped_strided_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 5)).double()


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_reusing_the_input_pass_gives_exactly_the_fd_gradients_on_a_batchnorm_free_net(norm):
    model = grouped_strided_cnn()
    x, y = batch(6)
    results = []
    for reuse in (False, True):
        model.zero_grad()
        out = GradientPenalty(norm=norm, lam=3.0, h=0.05, reuse_input_pass=reuse)(model, x, y)
        out.loss.backward()
        results.append((out, torch.cat([p.grad.flatten() for p in model.parameters()])))
    (plain, g_plain), (reuse, g_reuse) = results
    for field in ("loss", "clean_loss", "penalty", "grad_norm"):
        assert torch.allclose(getattr(plain, field).detach(), getattr(reuse, field).detach(), rtol=1e-12), field
    assert rel_err(g_reuse, g_plain) < 1e-12


def test_reusing_the_input_pass_refuses_batchnorm_in_train_mode():
    with pytest.raises(ConfigError, match="BatchNorm"):
        GradientPenalty(lam=1.0, reuse_input_pass=True)(small_cnn(bn=True), *batch(4))
    with pytest.raises(ConfigError, match="forward finite differences"):
        GradientPenalty(method="dbp", reuse_input_pass=True)
