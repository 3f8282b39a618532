"""An adversarial estimate of the modulus of continuity: projected gradient ascent on the first-order residual.

The paper estimates ``omega(eps) = sup_{x, ||v|| <= eps} r_x(v)``, ``r_x(v) = l(x+v) - l(x) - <v, grad l(x)>``
(eq. 5), from perturbations drawn uniformly in the eps-ball (:func:`paperlib.bounds.omega.first_order_residuals`).
In high dimension a uniform point of the ball is almost orthogonal to the few directions in which the loss bends,
so the residuals it sees are far below the supremum, and the omega-bound it gives is not a bound on the images
where it matters. :func:`ascent_residuals` instead *maximises* ``r_x`` over the ball (intersected with the [0, 1]
box) by projected gradient ascent, from several starts:

* start 0 is ``+eps`` along the steepest-ascent direction of ``l`` at ``x`` (``g/||g||_2`` in l2, ``sign(g)`` in
  linf), start 1 the opposite direction, and every further start a point drawn uniformly on the sphere (l2) or
  at a random corner (linf) of the ball;
* with ``warm`` (one perturbation per image: the bound stage passes the best point found at the previous, smaller
  radius of its grid, scaled out to the new one), start 0 is ``warm`` projected onto the ball and the others
  follow as above. The ascent then continues outward from radius to radius instead of starting afresh at each.
  On the first 150 paper-scale evaluation images of the undefended Fashion-MNIST model (l2, 4 starts x 10 steps
  at each of 24 radii) it cut the images whose per-image omega-bound exceeds an adversarial the attack suite
  found from 22 to 9, at the same cost (``benchmarks/bench_omega_ascent.py``, record
  ``benchmarks/records/omega_ascent-undefended-l2.json``);
* each step moves ``v`` by ``step_size`` (default ``2.5 * eps / steps``, as in Madry et al.'s PGD) along the
  normalized (l2) or signed (linf) gradient ``grad_v r_x(v) = grad l(x+v) - grad l(x)``, then projects onto the
  ball and clips ``x + v`` to [0, 1] (``x`` is in the box, so clipping keeps ``v`` in the ball);
* the result for a start is the largest residual of any iterate (the ascent is not monotone).

Every value returned is a residual actually attained at a feasible ``v``, so it is a lower bound on the true
``omega(eps)`` at ``x`` -- as every random sample is; the ascent makes the lower bound tight where the random
samples are not. Cost per image and radius: ``starts * (steps + 1)`` forward and backward passes.
"""

from __future__ import annotations

import torch
from torch import nn

from paperlib.config import ConfigError, check_int, check_positive, normalize_norm
from paperlib.losses import margin_loss
from paperlib.norms import get_norm, perturb_in_box
from paperlib.bounds.statistics import LossFn, eval_mode, model_device

__all__ = ["ascent_residuals", "ascent_passes"]


def ascent_passes(steps: int, starts: int) -> int:
    """Forward-and-backward passes per image and radius of :func:`ascent_residuals`."""
    return int(starts) * (int(steps) + 1)


def ascent_residuals(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    *,
    steps: int = 10,
    starts: int = 4,
    step_size: float | None = None,
    generator: torch.Generator,
    loss_fn: LossFn = margin_loss,
    clip: bool = True,
    batch_size: int = 256,
    warm: torch.Tensor | None = None,
    return_best: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Largest first-order residual found by projected gradient ascent from each start (module docstring).

    Args:
        model: the model (eval mode is used; its mode is restored).
        x: images ``[n, C, H, W]``; y: labels ``[n]``.
        eps: radius (> 0) of the ``norm``-ball ('l2' or 'linf').
        steps: ascent steps per start (0: the starts themselves are evaluated).
        starts: starts per image (>= 1; see the module docstring for which).
        step_size: step length in the norm (default ``2.5 * eps / max(steps, 1)``).
        generator: source of the random starts.
        loss_fn: per-example loss ``l``.
        clip: keep ``x + v`` in [0, 1].
        batch_size: images per pass (each pass holds ``batch_size * starts`` inputs).
        warm: None, or a perturbation per image ``[n, C, H, W]`` used as start 0 (projected onto the ball and
            clipped to the box first, so any tensor of that shape is allowed).
        return_best: also return, per image, the perturbation that attained the largest residual.

    Returns:
        float64 tensor ``[n, starts]`` (CPU): per image and start, the largest residual of any iterate; with
        ``return_best``, also the best perturbation per image ``[n, C, H, W]`` (CPU, the model's dtype).
    """
    ball = get_norm(normalize_norm(norm))
    check_positive("eps", eps)
    steps = check_int("steps", steps, 0)
    starts = check_int("starts", starts, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    alpha = float(check_positive("step_size", step_size)) if step_size is not None else 2.5 * eps / max(steps, 1)
    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype)
    if warm is not None and tuple(warm.shape) != tuple(x.shape):
        raise ConfigError(f"warm has shape {tuple(warm.shape)}; it must be one perturbation per image, {tuple(x.shape)}")
    out = torch.empty(x.shape[0], starts, dtype=torch.float64)
    best_v = torch.empty(x.shape, dtype=dtype) if return_best else None

    def loss_grad(inp: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xg = inp.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            value = loss_fn(model(xg), lab)
            (grad,) = torch.autograd.grad(value.sum(), xg)
        return value.detach(), grad.detach()

    with eval_mode(model):
        for s in range(0, x.shape[0], batch_size):
            xb = x[s : s + batch_size].to(device=device, dtype=dtype)
            yb = y[s : s + batch_size].to(device)
            b = xb.shape[0]
            l_x, g_x = loss_grad(xb, yb)
            shape = xb.shape[1:]
            # Starts: +-eps along the steepest-ascent direction, then random points on the sphere / corners.
            d = ball.direction(g_x) * eps
            v0 = [d, -d]
            if warm is not None:
                v0.insert(0, ball.project(warm[s : s + batch_size].to(device=device, dtype=dtype), eps))
            for _ in range(max(starts - 2, 0)):
                u = ball.sample_extreme(b, shape, generator=generator)
                v0.append(u.to(device=device, dtype=dtype) * eps)
            v = torch.stack(v0[:starts], dim=1).reshape(b * starts, *shape)
            xs = xb.repeat_interleave(starts, dim=0)
            ys = yb.repeat_interleave(starts, dim=0)
            ls = l_x.repeat_interleave(starts, dim=0)
            gs = g_x.repeat_interleave(starts, dim=0)
            if clip:
                v = perturb_in_box(xs, v)
            best = torch.full((b * starts,), -float("inf"), dtype=torch.float64, device=device)
            arg = v.clone() if return_best else None
            for t in range(steps + 1):
                lv, gv = loss_grad(xs + v, ys)
                r = lv.double() - ls.double() - (v * gs).reshape(b * starts, -1).sum(dim=1).double()
                if arg is not None:
                    better = r > best
                    arg[better] = v[better]
                best = torch.maximum(best, r)
                if t == steps:
                    break
                v = ball.project(v + alpha * ball.direction(gv - gs), eps)
                if clip:
                    v = perturb_in_box(xs, v)
            out[s : s + b] = best.view(b, starts).cpu()
            if best_v is not None:
                k = best.view(b, starts).argmax(dim=1)
                best_v[s : s + b] = arg.view(b, starts, *shape)[torch.arange(b, device=device), k].cpu()
    return (out, best_v) if best_v is not None else out
