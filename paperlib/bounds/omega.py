"""The omega-bound of Proposition 2.2: the modulus of continuity ``omega(eps)`` and the bound it gives.

With the evaluation loss ``l`` (:func:`paperlib.losses.margin_loss`, threshold ``l0 = 0``) and ``||.||_*`` the
dual of the attack norm (l2 -> l2, linf -> l1):

* **modulus of continuity** (paper eq. 5): ``omega(eps) = sup_{x, ||v|| <= eps} l(x+v) - l(x) - <v, grad l(x)>``,
  one number per model, norm and eps. Estimated from the first-order residual at ``n_samples`` points ``v``
  drawn uniformly in the eps-ball around each image (clipped to [0, 1]) -- :func:`first_order_residuals` --
  whose maxima over batches of images are fitted by a GEV -- :func:`estimate_omega`
  (:mod:`paperlib.bounds.adversarial` maximises the residual instead of sampling it). The bound stage
  (:mod:`paperlib.bounds.stage`) takes batches of ``omega_batch_images`` images (10 by default: "batches of the
  data distribution", as for L): with one image per batch the maxima of confidently classified images pile up
  at 0 (saturated softmax) and the KS test rejects the fit. It floors the estimate at 0 (``v = 0`` gives
  residual 0) and makes it non-decreasing in eps along the grid (the true omega is; a larger estimate at a
  smaller radius is a valid estimate at a larger one).
* **omega-bound** at ``eps``: the image is certified if it is correct and
  ``(l0 - l(x) - omega(eps)) / ||grad l(x)||_* >= eps`` -- :func:`omega_bound_certified` (written as
  ``l0 - l(x) - omega(eps) >= eps ||grad l(x)||_*`` so a zero gradient is handled exactly).
* **omega distance** (Table 2): the largest eps of a grid (:func:`eps_grid`) at which the image is certified,
  found by bisection over the grid (the test is monotone in eps once omega is non-decreasing) --
  :func:`omega_distance`; no search needs to go past the diameter of the [0, 1] box (:func:`box_diameter`).
* **regularity statistics** (Table B.3): gradient norms and omega at given radii -- :func:`regularity_statistics`.

Tensors in, tensors out. The certified error of these distances is :func:`paperlib.metrics.certified_error`.
These are *heuristic* bounds: omega is an estimate, not the supremum (:mod:`paperlib.bounds.audit`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from paperlib.config import ConfigError, check_int, check_nonnegative, check_positive, normalize_norm
from paperlib.losses import MARGIN_L0, get_loss
from paperlib.bounds.evt import GEVFit, estimate_supremum
from paperlib.bounds.sampling import perturb_in_box, sample_uniform_ball
from paperlib.bounds.statistics import ImageStatistics, LossFn, eval_mode, model_device
from paperlib.norms import get_norm

__all__ = [
    "first_order_residuals",
    "estimate_omega",
    "omega_bound_certified",
    "eps_grid",
    "omega_distance",
    "box_diameter",
    "regularity_statistics",
]


def first_order_residuals(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    *,
    n_samples: int,
    generator: torch.Generator,
    loss_fn: LossFn = get_loss("margin"),
    clip: bool = True,
    batch_size: int = 256,
    loss: torch.Tensor | None = None,
    grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """Residuals ``l(x+v) - l(x) - <v, grad l(x)>`` at ``n_samples`` uniform ``v`` in the eps-ball per image.

    Args:
        model: logits model (put in eval mode by the caller or here).
        x: images ``[n, C, H, W]`` in [0, 1]; y: labels ``[n]``.
        eps: ball radius > 0 (input units); norm: 'l2' or 'linf'.
        n_samples: perturbations per image.
        generator: source of the perturbations (CPU generator; the draws are moved to the model's device).
        loss_fn: the evaluation loss.
        clip: apply ``v`` as ``clip(x + v, 0, 1) - x`` (the threat model's box); the residual uses that ``v``.
        batch_size: images per forward pass.
        loss, grad: ``l(x)`` ``[n]`` and ``grad l(x)`` ``[n, C, H, W]`` if already computed.

    Returns:
        Tensor ``[n, n_samples]`` (CPU, float64).
    """
    norm = normalize_norm(norm)
    check_positive("eps", eps)
    n_samples = check_int("n_samples", n_samples, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype)
    out = torch.empty(x.shape[0], n_samples, dtype=torch.float64)
    with eval_mode(model):
        for s in range(0, x.shape[0], batch_size):
            xb = x[s : s + batch_size].to(device=device, dtype=dtype)
            yb = y[s : s + batch_size].to(device)
            b = xb.shape[0]
            if loss is None or grad is None:
                xg = xb.clone().requires_grad_(True)
                with torch.enable_grad():
                    lb = loss_fn(model(xg), yb)
                    (gb,) = torch.autograd.grad(lb.sum(), xg)
                lb, gb = lb.detach(), gb.detach()
            else:
                lb = loss[s : s + batch_size].to(device=device, dtype=dtype)
                gb = grad[s : s + batch_size].to(device=device, dtype=dtype)
            with torch.no_grad():
                for j in range(n_samples):
                    v = sample_uniform_ball(b, xb.shape[1:], eps, norm, generator=generator, dtype=dtype).to(device)
                    if clip:
                        v = perturb_in_box(xb, v)
                    lv = loss_fn(model(xb + v), yb)
                    linear = (v * gb).reshape(b, -1).sum(dim=1)
                    out[s : s + b, j] = (lv.double() - lb.double() - linear.double()).cpu()
    return out


def estimate_omega(
    residuals: torch.Tensor,
    *,
    batch_images: int = 1,
    tail_prob: float = 1e-3,
    ks_alpha: float = 1e-3,
    min_maxima: int = 10,
    floor_at_max: bool = True,
    seed: int = 0,
    method: str = "evt",
    bounded: bool = False,
) -> GEVFit:
    """Estimate ``omega(eps)`` from residuals ``[n_images, n_samples]`` of :func:`first_order_residuals`.

    A batch is ``batch_images`` images with all their perturbations; its maximum is the largest residual in
    it. ``method='evt'`` fits a GEV to the batch maxima, ``'empirical-max'`` takes the largest residual.
    The returned ``.value`` is *not* yet floored at 0 (:func:`~paperlib.bounds.stage.run_bounds` floors it).
    """
    per_image = residuals.reshape(residuals.shape[0], -1).max(dim=1).values
    return estimate_supremum(
        per_image, batch_size=batch_images, tail_prob=tail_prob, ks_alpha=ks_alpha, min_maxima=min_maxima,
        floor_at_max=floor_at_max, seed=seed, method=method, bounded=bounded,
    )


def omega_bound_certified(
    loss: torch.Tensor, grad_norm: torch.Tensor, omega: float, eps: float, l0: float = MARGIN_L0
) -> torch.Tensor:
    """The omega-bound test at radius ``eps`` (Proposition 2.2), per image: bool ``[n]``.

    True iff ``l(x) < l0`` and ``l0 - l(x) - omega(eps) >= eps * ||grad l(x)||_*``.
    """
    check_positive("eps", eps)
    check_nonnegative("omega", float(omega))
    return (loss < l0) & (l0 - loss - omega >= eps * grad_norm)


def eps_grid(eps_max: float, grid_size: int, extra: Sequence[float] = ()) -> np.ndarray:
    """Sorted unique radii: ``eps_max * k / grid_size`` for ``k = 1..grid_size`` plus ``extra`` (all > 0)."""
    check_positive("eps_max", eps_max)
    grid_size = check_int("grid_size", grid_size, 1)
    for r in extra:
        check_positive("radius", r)
    values = np.concatenate([eps_max * np.arange(1, grid_size + 1) / grid_size, np.asarray(extra, dtype=float)])
    return np.unique(np.round(values, 12))


def omega_distance(
    loss: torch.Tensor,
    grad_norm: torch.Tensor,
    grid: Sequence[float] | np.ndarray,
    omega: Sequence[float] | np.ndarray,
    l0: float = MARGIN_L0,
) -> torch.Tensor:
    """Per-image largest certified radius on ``grid`` (0 if none), by bisection over the grid.

    Args:
        loss, grad_norm: ``l(x)`` and ``||grad l(x)||_*``, shape ``[n]``.
        grid: increasing radii ``[K]`` (> 0).
        omega: ``omega`` at each radius ``[K]``, non-decreasing (see the module docstring), >= 0; or one such
            row per image, ``[n, K]`` (a per-image omega: the supremum over the ball around that image only).

    Returns:
        float64 tensor ``[n]``. The test is monotone along the grid (``omega`` and ``eps * ||grad||`` both
        increase), so bisection finds the largest certified grid point in ``log2(K)`` tests per image.
    """
    grid_t = torch.as_tensor(np.asarray(grid, dtype=np.float64))
    omega_t = torch.as_tensor(np.asarray(omega, dtype=np.float64))
    per_image = omega_t.ndim == 2
    if grid_t.ndim != 1 or omega_t.shape[-1:] != grid_t.shape or omega_t.ndim not in (1, 2) or grid_t.numel() == 0:
        raise ConfigError("grid and omega must be 1-d arrays of the same non-zero length (or omega [n, K])")
    if (grid_t <= 0).any() or (grid_t[1:] <= grid_t[:-1]).any():
        raise ConfigError("grid must be strictly increasing and > 0")
    if (omega_t < 0).any() or (omega_t[..., 1:] < omega_t[..., :-1]).any():
        raise ConfigError("omega must be >= 0 and non-decreasing along the grid")
    loss = loss.double().cpu()
    gnorm = grad_norm.double().cpu()
    if per_image and omega_t.shape[0] != loss.shape[0]:
        raise ConfigError(f"per-image omega has {omega_t.shape[0]} rows for {loss.shape[0]} images")
    k = grid_t.numel()
    lo = torch.full(loss.shape, -1, dtype=torch.long)  # largest index known certified
    hi = torch.full(loss.shape, k, dtype=torch.long)  # smallest index known not certified
    correct = loss < l0
    while True:
        active = hi - lo > 1
        if not active.any():
            break
        mid = torch.div(lo + hi, 2, rounding_mode="floor").clamp(0, k - 1)
        om = omega_t.gather(1, mid.view(-1, 1)).view(-1) if per_image else omega_t[mid]
        cert = correct & (l0 - loss - om >= grid_t[mid] * gnorm)
        lo = torch.where(active & cert, mid, lo)
        hi = torch.where(active & ~cert, mid, hi)
    return torch.where(lo >= 0, grid_t[lo.clamp_min(0)], torch.zeros_like(loss))


def box_diameter(shape: Sequence[int], norm: str) -> float:
    """Diameter of the [0, 1] box of inputs of ``shape`` in ``norm``: ``sqrt(N)`` (l2) or 1 (linf). No two images
    in the box are further apart, so no adversarial needs a larger perturbation."""
    return get_norm(normalize_norm(norm)).box_diameter(shape)


def regularity_statistics(stats: ImageStatistics, omega: dict[float, float]) -> dict[str, float]:
    """Table B.3: mean and max ``||grad l(x)||_2`` over the images, and omega at the given radii.

    ``omega`` maps radius -> estimate (l2 estimates for the table); keys become ``omega(<r>)``.
    """
    g = stats.grad_norm_l2.double()
    out = {"grad_norm_mean": float(g.mean()), "grad_norm_max": float(g.max())}
    for r, w in sorted(omega.items()):
        out[f"omega({r:g})"] = float(w)
    return out
