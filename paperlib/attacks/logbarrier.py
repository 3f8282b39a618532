"""The LogBarrier attack (Finlay, Pooladian & Oberman 2019; the authors' code, github cfinlay/logbarrier).

Start from a misclassified point (Gaussian noise of growing size around the image, 1.01^k * 0.01, clipped to
[0, 1]) and walk it toward the original while a logarithmic barrier keeps it misclassified:

    minimize   dist(x', x) + alpha * barrier(x'),   barrier(x') = -log(max_{i != y} p_i(x') - p_y(x'))

on softmax probabilities ``p``. ``dist`` is ``||x' - x||_2^2 / 2`` in l2 (the authors' update
``x' <- (1 - dt) x' + dt x - dt grad``) and a smooth maximum of ``|x' - x|`` (softmax-weighted with
temperature ``T``) in linf. Outer loop: ``alpha = alpha0 * beta^k`` for ``k < max_outer``; inner loop: at
most ``max_inner`` gradient steps of size ``dt``; an iterate that became correctly classified is pulled back
toward the previous one (``x' <- (1 - gamma) x' + gamma x_old``) until it is misclassified again; the inner
loop ends when the iterate moves by at most ``tol``. The best (closest) misclassified iterate is kept.

Differences from the authors' script, on purpose: the inner-loop stopping test is per image (theirs stops
when every image of the batch has stalled, so a result depended on the batch); the initial noise is clipped
to [0, 1] (theirs clipped a copy); an image whose initialization fails is reported as a failure instead of
aborting the batch. Failures are reported, never hidden: the base class recomputes success.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from paperlib.attacks.base import ImageNoise, MinimizationAttack
from paperlib.config import check_nonnegative, check_positive, check_probability, normalize_norm

__all__ = ["LogBarrierAttack", "gaussian_noise_start"]


def _kd(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


def gaussian_noise_start(model: nn.Module, x: Tensor, y: Tensor, noise: ImageNoise, rows: Tensor, *,
                         dt: float = 0.01, growth: float = 1.01, max_iters: int = 1000,
                         stream: int = 1 << 24) -> tuple[Tensor, Tensor]:
    """Misclassified starting points ``x + growth^k * dt * N(0, I)``, clipped, for the first k that works.

    Returns ``(start [R, ...], found bool [R])``; where not found, the image itself.
    """
    start = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    todo = torch.arange(len(x), device=x.device)
    shape = tuple(x.shape[1:])
    for k in range(max_iters):
        cand = (x[todo] + growth ** k * dt * noise.normal(stream + k, shape, x.dtype, rows=rows[todo])).clamp(0, 1)
        ok = ~_correct(model, cand, y[todo])
        start[todo[ok]] = cand[ok]
        found[todo[ok]] = True
        todo = todo[~ok]
        if todo.numel() == 0:
            break
    return start, found


class LogBarrierAttack(MinimizationAttack):
    """The LogBarrier attack in l2 or linf (defaults of the authors' code).

    Args:
        norm: 'l2' or 'linf' (case-insensitive).
        dt: gradient step size (0.01).
        alpha: initial barrier weight alpha0 (0.1).
        beta: factor by which alpha shrinks after each outer loop (0.75).
        gamma: backtracking factor (0.5).
        max_outer: number of outer loops (15).
        max_inner: maximum inner steps per outer loop (500).
        tol: an image's inner loop stops when its iterate moves by at most tol in the norm (1e-6).
        T: temperature of the smooth maximum approximating the linf norm (500).
        max_backtrack: halvings before an iterate is reset to the previous one (60; ``0.5^60`` is below
            float64 resolution, so this is the authors' unbounded loop made safe).
        init_max_iters: noise sizes tried for the starting point (1000; the largest is 1.01^1000*0.01 = 209).
    """

    name = "logbarrier"
    _salt = 0x10B

    def __init__(self, *, norm: str = "l2", dt: float = 0.01, alpha: float = 0.1, beta: float = 0.75,
                 gamma: float = 0.5, max_outer: int = 15, max_inner: int = 500, tol: float = 1e-6,
                 T: float = 500.0, max_backtrack: int = 60, init_max_iters: int = 1000) -> None:
        self.norm = normalize_norm(norm)
        self.dt = float(check_positive("dt", dt))
        self.alpha = float(check_positive("alpha", alpha))
        self.beta = float(check_probability("beta", beta))
        self.gamma = float(check_probability("gamma", gamma))
        self.max_outer = int(check_positive("max_outer", max_outer))
        self.max_inner = int(check_positive("max_inner", max_inner))
        self.tol = float(check_nonnegative("tol", tol))
        self.T = float(check_positive("T", T))
        self.max_backtrack = int(check_positive("max_backtrack", max_backtrack))
        self.init_max_iters = int(check_positive("init_max_iters", init_max_iters))

    def _dist(self, delta: Tensor) -> Tensor:
        flat = delta.flatten(1)
        return flat.norm(dim=1) if self.norm == "l2" else flat.abs().amax(dim=1)

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, noise: ImageNoise, rows: Tensor,
                **_: object) -> tuple[Tensor, Optional[Tensor]]:
        xpert, found = gaussian_noise_start(model, x, y, noise, rows, max_iters=self.init_max_iters)
        best = xpert.clone()
        best_d = torch.where(found, self._dist(xpert - x).to(torch.float64),
                             torch.full((len(x),), float("inf"), dtype=torch.float64, device=x.device))
        todo = found.nonzero().flatten()
        for k in range(self.max_outer):
            alpha = self.alpha * self.beta ** k
            active = todo.clone()
            for _ in range(self.max_inner):
                if active.numel() == 0:
                    break
                xa = xpert[active].detach().requires_grad_(True)
                x0, ya = x[active], y[active]
                p = model(xa).softmax(dim=-1)
                p_y = p.gather(1, ya[:, None]).squeeze(1)
                p_other = p.scatter(1, ya[:, None], -1.0).amax(dim=1)
                barrier = -torch.log(p_other - p_y)
                if self.norm == "l2":
                    dist_term = 0.5 * (xa - x0).flatten(1).pow(2).sum(1)
                else:
                    z = (xa - x0).abs().flatten(1)
                    dist_term = ((z * self.T).softmax(dim=-1) * z).sum(dim=-1)
                (g,) = torch.autograd.grad((dist_term + alpha * barrier).sum(), xa)
                with torch.no_grad():
                    xold = xa.detach()
                    xnew = (xold - self.dt * g).clamp(0, 1)
                    # backtrack toward the previous (misclassified) iterate while correctly classified
                    c = _correct(model, xnew, ya)
                    for _b in range(self.max_backtrack):
                        if not bool(c.any()):
                            break
                        xnew[c] = (1 - self.gamma) * xnew[c] + self.gamma * xold[c]
                        c = _correct(model, xnew, ya)
                    if bool(c.any()):
                        xnew[c] = xold[c]
                    xpert[active] = xnew
                    d = self._dist(xnew - x0).to(torch.float64)
                    better = d <= best_d[active]
                    best[active[better]] = xnew[better]
                    best_d[active[better]] = d[better]
                    moved = self._dist(xnew - xold)
                    active = active[moved > self.tol]
        return best, None
