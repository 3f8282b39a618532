"""Numerical checks of the paper's Propositions 3.1 and 3.2: tensors in, tensors out.

The book's theory chapters show them as tables through :mod:`paperlib.report.theory`.

* :func:`fd_relative_errors` -- Proposition 3.2: the finite-difference quotient ``(l(x + h d) - l(x)) / h``
  with ``d = g/||g||_2`` against the exact ``||g||_2``, as ``h`` varies, in float32 and float64. The truncation
  error is bounded by ``omega(h)/h`` (it shrinks with ``h``); round-off grows like ``eps_machine * |l| / h``;
  their sum is smallest at an intermediate ``h``, which float32 moves to larger ``h`` than float64.
* :func:`quadratic_cost_terms` -- Proposition 3.1: for a twice-differentiable loss and the quadratic cost
  ``c(v) = ||v||^2 / (2 delta)``, ``max_v l(x+v) - c(v) <= l(x) + delta / (2 (1 - delta C)) ||g||^2`` with
  ``C`` the largest positive curvature. We solve the inner maximization by gradient ascent and estimate ``C``
  by power iteration on Hessian-vector products at ``x`` and at the maximizer.
* :func:`step_costs` -- time and graph memory of a standard, an FD-penalty and a DBP-penalty training step.
* :func:`smooth_mlp` -- a small twice-differentiable (softplus) network for these checks; :func:`quick_train`
  -- a brief trainer for them, the tests and the benchmarks.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Sequence

import torch
from torch import nn

from paperlib.config import check_positive
from paperlib.losses import cross_entropy
from paperlib.regularizers import GradientPenalty

__all__ = ["smooth_mlp", "fd_relative_errors", "hessian_norm", "quadratic_cost_terms", "saved_tensor_bytes",
           "step_costs", "quick_train"]


def smooth_mlp(in_shape: tuple[int, ...] = (1, 28, 28), hidden: int = 128, num_classes: int = 10,
               seed: int = 0) -> nn.Module:
    """A softplus MLP (smooth, so Proposition 3.1's curvature ``C`` exists), seeded initialization."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(in_shape)
    model = nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.Softplus(), nn.Linear(hidden, num_classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=g) / math.sqrt(p.shape[-1]))
    return model


def _per_example_loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    xg = x.detach().clone().requires_grad_(True)
    loss = cross_entropy(model(xg), y)
    (g,) = torch.autograd.grad(loss.sum(), xg)
    return loss.detach(), g.detach()


def fd_relative_errors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, hs: Sequence[float],
                       dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64)) -> dict[str, torch.Tensor]:
    """Relative error ``|D_h - ||g||_2| / ||g||_2`` of the FD estimate ``D_h`` of ``||grad_x l||_2`` per example,
    for each ``h`` and dtype (Proposition 3.2).

    The exact reference is the float64 autograd gradient; examples with ``g = 0`` are left out.

    Returns:
        ``{dtype name ('float32', ...): relative errors [len(hs), n kept examples]}`` in float64.
    """
    hs = [check_positive("h", h) for h in hs]
    model64 = _copy_as(model, torch.float64)
    _, g_exact = _per_example_loss_and_grad(model64, x.double(), y)
    exact = g_exact.flatten(1).norm(dim=1)
    keep = exact > 0
    out = {}
    for dtype in dtypes:
        m = _copy_as(model, dtype)
        xd = x.to(dtype)
        loss, g = _per_example_loss_and_grad(m, xd, y)
        gn = g.flatten(1).norm(dim=1, keepdim=True)
        d = torch.where(gn > 0, g.flatten(1) / gn.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(g.flatten(1)))
        d = d.view_as(xd)
        rel = []
        for h in hs:
            with torch.no_grad():
                D = (cross_entropy(m(xd + h * d), y) - loss) / h
            rel.append(((D.double() - exact).abs() / exact)[keep])
        out[str(dtype).replace("torch.", "")] = torch.stack(rel) if rel else torch.empty(0, int(keep.sum()))
    return out


def _copy_as(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    return copy.deepcopy(model).to(dtype).eval()


def hessian_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 30, seed: int = 0) -> torch.Tensor:
    """Largest positive eigenvalue of the input Hessian of each example's loss, by power iteration on
    Hessian-vector products (shifted so the positive end of the spectrum dominates). Shape ``[B]``, >= 0."""
    g_ = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=g_, dtype=x.dtype)
    v = v / v.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))

    def hvp(u: torch.Tensor) -> torch.Tensor:
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(cross_entropy(model(xg), y).sum(), xg, create_graph=True)
        (hu,) = torch.autograd.grad((g * u).sum(), xg)
        return hu

    # spectral radius first (plain power iteration), then the top of H + rho I (all eigenvalues shifted >= 0)
    def power(apply, u, n):
        lam = torch.zeros(x.shape[0], dtype=x.dtype)
        for _ in range(n):
            w = apply(u)
            lam = (w * u).flatten(1).sum(dim=1)
            u = w / w.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (x.dim() - 1))
        return lam, u

    rho, _ = power(hvp, v, iters)
    rho = rho.abs()
    shift = rho.view(-1, *[1] * (x.dim() - 1))
    top, _ = power(lambda u: hvp(u) + shift * u, v, iters)
    return (top - rho).clamp_min(0)


def quadratic_cost_terms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, deltas: Sequence[float],
                         steps: int = 200, segment_points: int = 8) -> dict[str, torch.Tensor]:
    """Proposition 3.1 per example and ``delta``: the attained ``max_v l(x+v) - ||v||^2/(2 delta) - l(x)``
    against its first-order value ``delta/2 ||g||^2`` and the bound ``delta/(2(1 - delta C)) ||g||^2``.

    The maximization is gradient ascent from ``v = delta g`` (the first-order maximizer), with step ``delta/2``
    (the objective is ``1/delta``-strongly concave where ``delta C < 1``). ``C`` is the largest positive input
    Hessian eigenvalue at ``x`` and at ``segment_points`` points of the segment from ``x`` to the maximizer: the
    curvature that bounds the Taylor remainder there (the paper's ``C`` is the supremum over all inputs, which
    can only be larger and only loosens the bound). Use float64 models and inputs.

    Returns:
        ``{'attained', 'first_order', 'C', 'bound'}``, each ``[len(deltas), B]`` (``bound`` is ``inf`` where
        ``delta C >= 1``).
    """
    loss0, g = _per_example_loss_and_grad(model, x, y)
    g2 = g.flatten(1).pow(2).sum(dim=1)
    C0 = hessian_norm(model, x, y)
    terms: dict[str, list[torch.Tensor]] = {"attained": [], "first_order": [], "C": [], "bound": []}
    for delta in deltas:
        check_positive("delta", delta)
        v = (delta * g).clone().requires_grad_(True)
        for _ in range(steps):
            obj = cross_entropy(model(x + v), y) - v.flatten(1).pow(2).sum(dim=1) / (2 * delta)
            (grad_v,) = torch.autograd.grad(obj.sum(), v)
            with torch.no_grad():
                v += (delta / 2) * grad_v
        with torch.no_grad():
            attained = cross_entropy(model(x + v), y) - v.flatten(1).pow(2).sum(dim=1) / (2 * delta) - loss0
        # The Taylor remainder of l along the segment [x, x + v] is at most (C/2)||v||^2 with C the largest
        # curvature *on that segment*, which is what the inequality at v needs: sample it at points along it.
        C = C0
        for s in torch.linspace(0.125, 1.0, segment_points).tolist():
            C = torch.maximum(C, hessian_norm(model, (x + s * v).detach(), y))
        bound = torch.where(delta * C < 1, delta / (2 * (1 - delta * C)) * g2, torch.full_like(g2, math.inf))
        for name, value in (("attained", attained), ("first_order", delta / 2 * g2), ("C", C), ("bound", bound)):
            terms[name].append(value.detach())
    return {k: torch.stack(v) if v else torch.empty(0, x.shape[0], dtype=x.dtype) for k, v in terms.items()}


def saved_tensor_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``fn()`` runs (its graph's memory).

    Deterministic (unlike wall time or allocator peaks), so it compares methods' memory exactly.
    """
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = (t.untyped_storage().data_ptr(), t.dtype)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except RuntimeError:  # tensors without storage (e.g. sparse/meta)
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def step_costs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "l2", h: float = 0.01,
               lam: float = 1.0, repeats: int = 5) -> dict[str, dict[str, float]]:
    """Time and graph memory of one forward+backward step of standard training, the FD penalty and the DBP
    penalty on one batch.

    Returns:
        ``{'standard' | 'FD' | 'DBP': {'seconds': median wall seconds of ``repeats`` steps (after one warm-up),
        'graph_bytes': bytes autograd saves for backward (:func:`saved_tensor_bytes`)}}``.
    """
    def standard():
        return cross_entropy(model(x), y).mean()

    fd = GradientPenalty(norm=norm, method="fd", lam=lam, h=h)
    dbp = GradientPenalty(norm=norm, method="dbp", lam=lam)
    steps = {"standard": standard, "FD": lambda: fd(model, x, y).loss, "DBP": lambda: dbp(model, x, y).loss}
    out = {}
    for name, make_loss in steps.items():
        times = []
        for _ in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            make_loss().backward()
            times.append(time.perf_counter() - t0)
        out[name] = {"seconds": statistics.median(times[1:]), "graph_bytes": float(saved_tensor_bytes(make_loss))}
    return out


def quick_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 300, batch_size: int = 128,
                lr: float = 0.05, seed: int = 0, epochs: int | None = None) -> nn.Module:
    """A briefly trained model (SGD, momentum 0.9) whose gradients look like a trained network's rather than an
    initialization's, for the theory chapters, tests and benchmarks. Returns the model in eval mode.

    By default ``steps`` seeded minibatches drawn with replacement; with ``epochs``, that many passes over
    ``(x, y)`` in minibatches of ``batch_size``, shuffled by a generator seeded with ``seed + epoch``.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step(idx: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        cross_entropy(model(x[idx]), y[idx]).mean().backward()
        opt.step()

    model.train()
    if epochs is None:
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            step(torch.randint(0, x.shape[0], (batch_size,), generator=g))
    else:
        for epoch in range(epochs):
            perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + epoch))
            for i in range(0, x.shape[0], batch_size):
                step(perm[i:i + batch_size])
    return model.eval()
