"""The bounds of Proposition 2.2: L-bound, modulus of continuity omega(eps), omega-bound, certified error.

With the evaluation loss ``l`` (:func:`paperlib.losses.margin_loss`, threshold ``l0 = 0``) and ``||.||_*`` the
dual of the attack norm (l2 -> l2, linf -> l1):

* **L-bound** (per image): ``||v|| >= max(l0 - l(x), 0) / L`` where ``L = sup_x ||grad l(x)||_*`` is the
  Lipschitz constant of the loss, estimated from the dual gradient norms of the test images either by their
  empirical maximum (the authors' code, ``lipschitz='empirical-max'``) or by an extreme-value fit to batch
  maxima (what the paper describes, ``lipschitz='evt'``, the default) -- :func:`lipschitz_constant`, :func:`l_bound`.
* **modulus of continuity** (paper eq. 5): ``omega(eps) = sup_{x, ||v|| <= eps} l(x+v) - l(x) - <v, grad l(x)>``,
  one number per model, norm and eps. Estimated from the first-order residual at ``omega_samples`` points
  ``v`` drawn uniformly in the eps-ball around each image (clipped to [0, 1]) -- :func:`first_order_residuals`
  -- whose maxima over batches of ``omega_batch_images`` images (10 by default: "batches of the data
  distribution", as for L) are fitted by a GEV -- :func:`estimate_omega`. With one image per batch the
  maxima of confidently classified images pile up at 0 (saturated softmax) and the KS test rejects the fit.
  The estimate is floored at 0 (``v = 0`` gives residual 0) and made non-decreasing in eps along the grid
  (the true omega is; a larger estimate at a smaller radius is a valid estimate at a larger one).
* **omega-bound** at ``eps``: the image is certified if it is correct and
  ``(l0 - l(x) - omega(eps)) / ||grad l(x)||_* >= eps`` -- :func:`omega_bound_certified` (written as
  ``l0 - l(x) - omega(eps) >= eps ||grad l(x)||_*`` so a zero gradient is handled exactly).
* **omega distance** (Table 2): the largest eps of a grid at which the image is certified, found by
  bisection over the grid (the test is monotone in eps once omega is non-decreasing) -- :func:`omega_distance`.
* **certified error at radius r** (Tables 1, B.6): the percentage of images not certified at ``r`` --
  :func:`certified_error`; **regularity statistics** (Table B.3) -- :func:`regularity_statistics`.

:func:`run_bounds` does all of it for one model and one norm from a :class:`BoundConfig`, and writes
``bounds.csv`` (one row per image), ``evt.json`` (every fit), ``certified_error.csv`` and ``metrics.json``
to the run store; a finished run with the same config is loaded instead of recomputed.

These are *heuristic* bounds: L and omega are estimates, not suprema. :mod:`paperlib.bounds.audit` measures how
often they exceed the distance of an adversarial the attack suite actually found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from paperlib.config import (
    OMIT_AT_DEFAULT,
    ConfigError,
    check_choice,
    check_linf_eps,
    check_nonnegative,
    check_positive,
    check_probability,
    check_unit_images,
    config_from_dict,
    config_hash,
    normalize_norm,
)
from paperlib.losses import LOSSES, MARGIN_L0, get_loss
from paperlib.bounds.evt import GEVFit, estimate_supremum
from paperlib.bounds.sampling import make_generator, perturb_in_box, sample_uniform_ball
from paperlib.bounds.statistics import ImageStatistics, eval_mode, image_statistics, model_device
from paperlib.norms import get_norm

__all__ = [
    "BoundConfig",
    "BoundsResult",
    "lipschitz_constant",
    "l_bound",
    "first_order_residuals",
    "estimate_omega",
    "omega_bound_certified",
    "omega_distance",
    "certified_error",
    "regularity_statistics",
    "default_radii",
    "eps_grid",
    "estimate_label",
    "fits_accepted",
    "box_diameter",
    "ball_gradient_norms",
    "run_bounds",
    "load_bounds",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Radii at which certified error is reported by default (Tables 1, B.6; B.3 needs omega(0.5), omega(1.0)).
DEFAULT_RADII: dict[str, tuple[float, ...]] = {
    "l2": (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),
    "linf": (2 / 255, 8 / 255),
}
#: Largest radius of the omega-distance grid by default.
DEFAULT_EPS_MAX: dict[str, float] = {"l2": 2.0, "linf": 32 / 255}


def default_radii(norm: str) -> tuple[float, ...]:
    """The reporting radii of ``norm`` used when a config gives none."""
    return DEFAULT_RADII[normalize_norm(norm)]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


# --------------------------------------------------------------------------------------------------
# L-bound
# --------------------------------------------------------------------------------------------------


def lipschitz_constant(
    grad_norms: torch.Tensor | np.ndarray,
    *,
    method: str = "evt",
    batch_size: int = 10,
    tail_prob: float = 1e-3,
    ks_alpha: float = 1e-3,
    min_maxima: int = 10,
    floor_at_max: bool = True,
    seed: int = 0,
    bounded: bool = False,
) -> GEVFit:
    """Estimate ``L = sup_x ||grad l(x)||_*`` from per-image dual gradient norms (shape ``[n]``).

    ``method='empirical-max'``: the largest norm (the authors' code). ``method='evt'``: GEV fit to the maxima
    of batches of ``batch_size`` images (see :mod:`paperlib.bounds.evt`). ``.value`` of the result is ``L``.
    """
    check_choice("lipschitz", method, ("evt", "empirical-max"))
    return estimate_supremum(
        grad_norms, batch_size=batch_size, tail_prob=tail_prob, ks_alpha=ks_alpha, min_maxima=min_maxima,
        floor_at_max=floor_at_max, seed=seed, method=method, bounded=bounded,
    )


def l_bound(loss: torch.Tensor, lipschitz: float, l0: float = MARGIN_L0) -> torch.Tensor:
    """Per-image L-bound ``max(l0 - l(x), 0) / L`` (shape of ``loss``; input units of the attack norm).

    ``L = 0`` (a constant loss) gives ``inf`` for a positive gap and 0 otherwise.
    """
    check_nonnegative("lipschitz", float(lipschitz))
    gap = (l0 - loss).clamp_min(0.0)
    if lipschitz == 0:
        return torch.where(gap > 0, torch.full_like(gap, float("inf")), torch.zeros_like(gap))
    return gap / lipschitz


# --------------------------------------------------------------------------------------------------
# Modulus of continuity
# --------------------------------------------------------------------------------------------------


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
    _check_int("n_samples", n_samples, 1)
    _check_int("batch_size", batch_size, 1)
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
    The returned ``.value`` is *not* yet floored at 0 (:func:`run_bounds` floors it).
    """
    per_image = residuals.reshape(residuals.shape[0], -1).max(dim=1).values
    return estimate_supremum(
        per_image, batch_size=batch_images, tail_prob=tail_prob, ks_alpha=ks_alpha, min_maxima=min_maxima,
        floor_at_max=floor_at_max, seed=seed, method=method, bounded=bounded,
    )


# --------------------------------------------------------------------------------------------------
# omega-bound and certified error
# --------------------------------------------------------------------------------------------------


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
    _check_int("grid_size", grid_size, 1)
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


def certified_error(
    radius: torch.Tensor | np.ndarray, correct: torch.Tensor | np.ndarray, radii: Sequence[float]
) -> dict[float, float]:
    """Certified % error at each ``r`` in ``radii``: ``100 * mean(not (correct and radius >= r))``.

    ``radius`` is a per-image certified radius (L-bound, omega distance, smoothing radius) and ``correct``
    whether the (smoothed) prediction is right; abstentions and misclassifications are errors at every r.
    For the omega distance on a grid, ``radius >= r`` implies the image is certified at ``r`` (monotonicity),
    so the value is exact at grid radii and conservative between them.
    """
    rad = np.asarray(radius.cpu() if isinstance(radius, torch.Tensor) else radius, dtype=np.float64)
    cor = np.asarray(correct.cpu() if isinstance(correct, torch.Tensor) else correct, dtype=bool)
    if rad.shape != cor.shape:
        raise ConfigError(f"radius {rad.shape} and correct {cor.shape} must have the same shape")
    if rad.size == 0:
        raise ConfigError("certified error of zero images is undefined")
    return {float(r): float(100.0 * np.mean(~(cor & (rad >= r)))) for r in radii}


def regularity_statistics(stats: ImageStatistics, omega: dict[float, float]) -> dict[str, float]:
    """Table B.3: mean and max ``||grad l(x)||_2`` over the images, and omega at the given radii.

    ``omega`` maps radius -> estimate (l2 estimates for the table); keys become ``omega(<r>)``.
    """
    g = stats.grad_norm_l2.double()
    out = {"grad_norm_mean": float(g.mean()), "grad_norm_max": float(g.max())}
    for r, w in sorted(omega.items()):
        out[f"omega({r:g})"] = float(w)
    return out


# --------------------------------------------------------------------------------------------------
# The whole computation for one model and one norm
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundConfig:
    """What :func:`run_bounds` computes. Frozen; validated on construction (:class:`ConfigError`).

    Args:
        norm: attack norm, 'l2' or 'linf' (gradients use its dual: l2 or l1).
        n_images: number of images bounded (the same draw as the attack suite's: ``sample_images(n, seed)``).
        image_seed: seed of that draw.
        loss: evaluation loss, 'margin' (the paper's, on probabilities) or 'logit-margin'.
        top_k: top-k variant of the loss (5 for ImageNet's top-5 error).
        lipschitz: which L the ``l_bound`` column uses: 'evt' (the paper) or 'empirical-max' (authors' code);
            both are always computed and stored.
        lipschitz_batch: images per batch maximum for the EVT estimate of L.
        omega_samples: uniform perturbations per image and radius for omega(eps).
        omega_batch_images: images per batch maximum for the EVT estimate of omega(eps).
        omega_images: estimate omega from the first ``omega_images`` images only (None: all of them).
        omega_method: 'evt' (the paper) or 'empirical-max'.
        eps_max: largest radius of the omega-distance grid (None: 2.0 in l2, 32/255 in linf; at most 1 in linf).
        grid_size: number of evenly spaced grid radii (the reporting radii are added to the grid).
        radii: radii at which certified error is reported (None: :data:`DEFAULT_RADII` of the norm).
        tail_prob: EVT tail probability ``p`` (estimate = the fitted ``1 - p`` quantile; the paper's 0.001).
        ks_alpha: reject a GEV fit when its Kolmogorov-Smirnov p-value is below this (use the empirical max).
        min_maxima: fewest batch maxima for a GEV fit.
        floor_at_max: never estimate a supremum below the largest observed sample.
        clip: keep perturbed points in [0, 1] when sampling the residual.
        batch_size: images per forward/backward pass.
        seed: seed of every random draw (perturbations, batch shuffles).

    Other Parameters:
        omega_ascent_steps: > 0 adds the *adversarial* omega estimator (``paperlib.bounds.adversarial``):
            projected gradient ascent on the first-order residual, this many steps from ``omega_ascent_starts``
            starts per image and radius, pooled with the random samples; reported beside the paper's random
            estimator (``omega_distance_adversarial``, ``evt.json['omega_adversarial']``). 0: the paper's only.
        omega_ascent_starts: starts of the ascent per image and radius (see the adversarial module).
        omega_per_image: also bound every image with its own adversarial omega (the largest residual found
            around that image, an empirical maximum; ``omega_distance_adversarial_per_image``).
        evt_maxima: None: batch maxima over ``lipschitz_batch`` / ``omega_batch_images`` images (6 maxima at
            60 images, too few for a fit). A number m: pool every sample (all images, all perturbations / all
            gradient samples) and take maxima of batches of ``n_samples // m`` samples, so at least m maxima
            are fitted whatever the image count.
        lipschitz_samples: dual gradient norms per image for L: at the image and at ``lipschitz_samples - 1``
            points uniform in the ``eps_max``-ball around it (clipped to [0, 1]). 1: at the image only.
        omega_extend: None: the omega-distance search stops at ``eps_max`` (an image certified there gets
            ``eps_max``). A factor q > 1: radii ``eps_max * q^j`` are added (omega estimated at each) while any
            image is still certified at the largest radius, up to the diameter of the [0, 1] box in the norm
            (``sqrt(N)`` in l2, 1 in linf), beyond which no adversarial can exist. Either way the table states
            per image whether its distance is the largest radius searched (``omega_distance_at_cap``) and that
            radius (``omega_search_cap``).
        evt_tail: 'any': the GEV shape is free (the fit may have a heavy Frechet tail); 'bounded': only bounded
            tails are fitted (reverse Weibull, as CLEVER does), since L and omega of the probability margin loss
            are finite. Measured on 10 images of runs/fmnist/fd-l2-lam1-h0.01 with pooled samples, free fits had
            Frechet shapes and 0.999 quantiles up to 2988 against largest residuals below 2.

    The Other Parameters were added after runs were stored. At their defaults the computation is the one
    before they existed, and they are left out of the config's dict and hash (``config.OMIT_AT_DEFAULT``), so
    every stored run keeps its hash and loads.
    """

    norm: str = "l2"
    n_images: int = 1000
    image_seed: int = 0
    loss: str = "margin"
    top_k: int = 1
    lipschitz: str = "evt"
    lipschitz_batch: int = 10
    omega_samples: int = 16
    omega_batch_images: int = 10
    omega_images: int | None = None
    omega_method: str = "evt"
    eps_max: float | None = None
    grid_size: int = 20
    radii: tuple[float, ...] | None = None
    tail_prob: float = 1e-3
    ks_alpha: float = 1e-3
    min_maxima: int = 10
    floor_at_max: bool = True
    clip: bool = True
    batch_size: int = 250
    seed: int = 0
    # Added after runs were stored: left out of the hash while at their default (see config.OMIT_AT_DEFAULT).
    omega_ascent_steps: int = field(default=0, metadata={OMIT_AT_DEFAULT: True})
    omega_ascent_starts: int = field(default=4, metadata={OMIT_AT_DEFAULT: True})
    omega_per_image: bool = field(default=False, metadata={OMIT_AT_DEFAULT: True})
    evt_maxima: int | None = field(default=None, metadata={OMIT_AT_DEFAULT: True})
    lipschitz_samples: int = field(default=1, metadata={OMIT_AT_DEFAULT: True})
    omega_extend: float | None = field(default=None, metadata={OMIT_AT_DEFAULT: True})
    evt_tail: str = field(default="any", metadata={OMIT_AT_DEFAULT: True})

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", normalize_norm(self.norm))
        _check_int("n_images", self.n_images, 1)
        _check_int("image_seed", self.image_seed, 0)
        check_choice("loss", self.loss, tuple(LOSSES))
        _check_int("top_k", self.top_k, 1)
        check_choice("lipschitz", self.lipschitz, ("evt", "empirical-max"))
        _check_int("lipschitz_batch", self.lipschitz_batch, 1)
        _check_int("omega_samples", self.omega_samples, 1)
        _check_int("omega_batch_images", self.omega_batch_images, 1)
        if self.omega_images is not None:
            _check_int("omega_images", self.omega_images, 1)
        check_choice("omega_method", self.omega_method, ("evt", "empirical-max"))
        if self.eps_max is not None:
            check_positive("eps_max", self.eps_max)
            check_linf_eps("eps_max", self.eps_max, self.norm)
        _check_int("grid_size", self.grid_size, 1)
        if self.radii is not None:
            radii = tuple(float(r) if not isinstance(r, bool) else r for r in self.radii)
            if not radii:
                raise ConfigError("radii must not be empty (or None for the defaults)")
            for r in radii:
                check_positive("radius", r)
                check_linf_eps("radius", r, self.norm)
            object.__setattr__(self, "radii", radii)
        check_probability("tail_prob", self.tail_prob)
        check_probability("ks_alpha", self.ks_alpha)
        _check_int("min_maxima", self.min_maxima, 3)
        for name in ("floor_at_max", "clip"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seed", self.seed, 0)
        _check_int("omega_ascent_steps", self.omega_ascent_steps, 0)
        _check_int("omega_ascent_starts", self.omega_ascent_starts, 1)
        if not isinstance(self.omega_per_image, bool):
            raise ConfigError(f"omega_per_image={self.omega_per_image!r} must be true or false")
        if self.omega_per_image and self.omega_ascent_steps == 0:
            raise ConfigError("omega_per_image=True needs the adversarial estimator (omega_ascent_steps > 0)")
        if self.evt_maxima is not None:
            _check_int("evt_maxima", self.evt_maxima, 3)
        _check_int("lipschitz_samples", self.lipschitz_samples, 1)
        if self.omega_extend is not None:
            if isinstance(self.omega_extend, bool) or not isinstance(self.omega_extend, (int, float)) \
                    or not math.isfinite(self.omega_extend) or not self.omega_extend > 1:
                raise ConfigError(f"omega_extend={self.omega_extend!r} must be a number > 1 (or None: no extension)")
            object.__setattr__(self, "omega_extend", float(self.omega_extend))
        check_choice("evt_tail", self.evt_tail, ("any", "bounded"))

    @property
    def adversarial(self) -> bool:
        """Whether the adversarial omega estimator runs beside the paper's."""
        return self.omega_ascent_steps > 0

    @property
    def resolved_radii(self) -> tuple[float, ...]:
        return self.radii if self.radii is not None else default_radii(self.norm)

    @property
    def resolved_eps_max(self) -> float:
        return self.eps_max if self.eps_max is not None else DEFAULT_EPS_MAX[self.norm]

    def grid(self) -> np.ndarray:
        """The radii at which omega is estimated (even grid + reporting radii)."""
        extra = list(self.resolved_radii)
        if self.norm == "l2":
            extra += [0.5, 1.0]  # Table B.3 reports omega(0.5) and omega(1.0) in l2
        return eps_grid(self.resolved_eps_max, self.grid_size, extra)


@dataclass
class BoundsResult:
    """What :func:`run_bounds` returns (and writes).

    Attributes:
        table: one row per image (``bounds.csv``): image, label, prediction, correct, loss, grad_norm_l2,
            grad_norm_l1, grad_norm (the dual norm of ``norm``), l_bound_evt, l_bound_empirical_max,
            l_bound (the config's choice), omega_distance, norm.
        evt: every extreme-value fit (``evt.json``): ``lipschitz`` {'evt', 'empirical-max'} and ``omega``
            (one entry per grid radius with the raw fit and the value used).
        certified: certified % error per reporting radius for both bounds (``certified_error.csv``).
        metrics: summary numbers (``metrics.json``).
    """

    table: pd.DataFrame
    evt: dict[str, Any]
    certified: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)

    def omega(self) -> dict[float, float]:
        """Radius -> omega(eps) used in the bound."""
        return {float(e["eps"]): float(e["omega"]) for e in self.evt["omega"]}


def _check_inputs(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | Sequence[int],
                  cfg: BoundConfig | Any) -> torch.Tensor:
    """Images finite and in [0, 1], one label and one index per image (the labels are checked against the
    model's logits when the bounds are computed)."""
    check_unit_images(x)
    idx_t = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
    if not (x.shape[0] == getattr(y, "shape", (None,))[0] == idx_t.shape[0]):
        raise ConfigError(f"x ({x.shape[0]}), y ({getattr(y, 'shape', [None])[0]}) and idx ({idx_t.shape[0]}) "
                          "must have one entry per image")
    if x.shape[0] != cfg.n_images:
        raise ConfigError(f"got {x.shape[0]} images but the config says n_images={cfg.n_images}")
    return idx_t


def estimate_label(fit: GEVFit | dict[str, Any]) -> str:
    """How an estimate was obtained, in words: 'EVT accepted' (the GEV fit passed its KS test and gave the
    value), 'empirical-max fallback: <reason>' (a fit was asked for but not used), or 'empirical max
    (requested)' (the config asked for the largest sample)."""
    d = fit.to_dict() if isinstance(fit, GEVFit) else fit
    if d.get("method") == "gev":
        return "EVT accepted"
    if d.get("reason") == "requested":
        return "empirical max (requested)"
    return f"empirical-max fallback: {d.get('reason', '')}"


def box_diameter(shape: Sequence[int], norm: str) -> float:
    """Diameter of the [0, 1] box of inputs of ``shape`` in ``norm``: ``sqrt(N)`` (l2) or 1 (linf). No two images
    in the box are further apart, so no adversarial needs a larger perturbation."""
    return get_norm(normalize_norm(norm)).box_diameter(shape)


def ball_gradient_norms(
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
) -> torch.Tensor:
    """Dual gradient norms ``||grad l(x + v)||_*`` at ``n_samples`` points ``v`` uniform in the eps-ball around
    each image (clipped to [0, 1] when ``clip``): samples of the Lipschitz constant's supremum near the data.

    Returns a float64 tensor ``[n, n_samples]`` (CPU). One forward and backward pass per sample.
    """
    from paperlib.bounds.statistics import dual_norm, loss_and_gradient

    norm = normalize_norm(norm)
    check_positive("eps", eps)
    _check_int("n_samples", n_samples, 1)
    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype)
    out = torch.empty(x.shape[0], n_samples, dtype=torch.float64)
    with eval_mode(model):
        for s in range(0, x.shape[0], batch_size):
            xb = x[s : s + batch_size].to(device=device, dtype=dtype)
            yb = y[s : s + batch_size].to(device)
            b = xb.shape[0]
            for j in range(n_samples):
                v = sample_uniform_ball(b, xb.shape[1:], eps, norm, generator=generator, dtype=dtype).to(device)
                if clip:
                    v = perturb_in_box(xb, v)
                _, g = loss_and_gradient(model, xb + v, yb, loss_fn=loss_fn)
                out[s : s + b, j] = dual_norm(g, norm).double().cpu()
    return out


def _seeded(*words: int) -> torch.Generator:
    return make_generator(int(np.random.SeedSequence(list(words)).generate_state(1)[0]))


def _compute_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, cfg: BoundConfig,
                    run: Any = None, progress: bool = True) -> BoundsResult:
    import time

    from tqdm import tqdm  # text bars: no ipywidgets needed in notebooks

    from paperlib.bounds.adversarial import ascent_passes, ascent_residuals

    loss_fn = lambda logits, labels: get_loss(cfg.loss)(logits, labels, top_k=cfg.top_k)  # noqa: E731
    cost: dict[str, dict[str, float]] = {}

    def charge(stage: str, seconds: float, images: int, fb: float = 0.0, fwd: float = 0.0) -> None:
        c = cost.setdefault(stage, {"seconds": 0.0, "images": images, "forward_backward_per_image": 0.0,
                                    "forward_per_image": 0.0})
        c["seconds"] += seconds
        c["forward_backward_per_image"] += fb
        c["forward_per_image"] += fwd

    t0 = time.perf_counter()
    stats = image_statistics(model, x, y, batch_size=cfg.batch_size, loss_fn=loss_fn, progress=progress)
    charge("statistics", time.perf_counter() - t0, x.shape[0], fb=1)
    gnorm = stats.grad_norm(cfg.norm)
    fit_kw: dict[str, Any] = dict(tail_prob=cfg.tail_prob, ks_alpha=cfg.ks_alpha, min_maxima=cfg.min_maxima,
                                  floor_at_max=cfg.floor_at_max, seed=cfg.seed)
    if cfg.evt_tail == "bounded":
        fit_kw["bounded"] = True
    lip_values: torch.Tensor = gnorm
    if cfg.lipschitz_samples > 1:
        t0 = time.perf_counter()
        extra = ball_gradient_norms(model, x, y, cfg.resolved_eps_max, cfg.norm, n_samples=cfg.lipschitz_samples - 1,
                                    generator=_seeded(cfg.seed, 2 ** 31 - 1), loss_fn=loss_fn, clip=cfg.clip,
                                    batch_size=cfg.batch_size)
        charge("lipschitz_samples", time.perf_counter() - t0, x.shape[0], fb=cfg.lipschitz_samples - 1)
        lip_values = torch.cat([gnorm.double().view(-1, 1), extra], dim=1).reshape(-1)
    lip_batch = cfg.lipschitz_batch if cfg.evt_maxima is None else max(1, lip_values.numel() // cfg.evt_maxima)
    lip = {m: lipschitz_constant(lip_values, method=m, batch_size=lip_batch, **fit_kw)
           for m in ("evt", "empirical-max")}

    grid = [float(e) for e in cfg.grid()]
    n_omega = x.shape[0] if cfg.omega_images is None else min(cfg.omega_images, x.shape[0])
    xo, yo = x[:n_omega], y[:n_omega]
    state = run.load_checkpoint() if run is not None else None
    records: dict[int, dict[str, Any]] = {}
    if state is not None and state.get("kind") == "bounds-omega":
        for j, k in enumerate(state["done"]):
            rec: dict[str, Any] = {"random": (state["random"][j] if state.get("random") is not None
                                              else state["maxima"][j].view(-1, 1))}
            if state.get("eps") is not None:
                rec["eps"] = float(state["eps"][j])
            if state.get("ascent") is not None and state["ascent"][j] is not None:
                rec["ascent"] = state["ascent"][j]
            records[int(k)] = rec

    def save() -> None:
        if run is None:
            return
        done = sorted(records)
        run.save_checkpoint({
            "kind": "bounds-omega", "done": done, "maxima": [records[i]["random"].max(dim=1).values for i in done],
            "random": [records[i]["random"] for i in done], "eps": [records[i].get("eps") for i in done],
            "ascent": [records[i].get("ascent") for i in done],
        })

    def measure(k: int, eps: float) -> None:
        rec = records.get(k)
        if rec is not None and abs(rec.get("eps", eps) - eps) <= 1e-12 * max(1.0, eps) \
                and (not cfg.adversarial or "ascent" in rec):
            return
        # One generator per radius, seeded by (seed, k): a resumed run draws exactly the same perturbations.
        t = time.perf_counter()
        res = first_order_residuals(model, xo, yo, float(eps), cfg.norm, n_samples=cfg.omega_samples,
                                    generator=_seeded(cfg.seed, k), loss_fn=loss_fn, clip=cfg.clip,
                                    batch_size=cfg.batch_size)
        charge("omega_random", time.perf_counter() - t, n_omega, fb=1, fwd=cfg.omega_samples)
        rec = {"eps": float(eps), "random": res}
        if cfg.adversarial:
            t = time.perf_counter()
            rec["ascent"] = ascent_residuals(
                model, xo, yo, float(eps), cfg.norm, steps=cfg.omega_ascent_steps, starts=cfg.omega_ascent_starts,
                generator=_seeded(cfg.seed, k, 1), loss_fn=loss_fn, clip=cfg.clip, batch_size=cfg.batch_size)
            charge("omega_adversarial", time.perf_counter() - t, n_omega,
                   fb=1 + ascent_passes(cfg.omega_ascent_steps, cfg.omega_ascent_starts))
        records[k] = rec
        save()

    fits: dict[tuple[str, int], GEVFit] = {}

    def fit(which: str, k: int) -> GEVFit:
        if (which, k) not in fits:
            rec = records[k]
            samples = rec["random"] if which == "random" else torch.cat([rec["random"], rec["ascent"]], dim=1)
            if cfg.evt_maxima is None:  # batch maxima over omega_batch_images images (the paper's reading)
                fits[which, k] = estimate_omega(samples.max(dim=1).values.view(-1, 1),
                                                batch_images=cfg.omega_batch_images, method=cfg.omega_method,
                                                **fit_kw)
            else:  # every sample pooled, batches of n_samples // evt_maxima samples
                flat = samples.reshape(-1)
                fits[which, k] = estimate_supremum(flat, batch_size=max(1, flat.numel() // cfg.evt_maxima),
                                                   method=cfg.omega_method, **fit_kw)
        return fits[which, k]

    def entries() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {"random": [], "adversarial": []}
        run_r = run_a = 0.0
        for k, eps in enumerate(grid):
            f = fit("random", k)
            raw = max(f.value, 0.0)
            run_r = max(run_r, raw)  # omega is non-decreasing in eps
            out["random"].append({"eps": float(eps), "omega": run_r, "omega_raw": raw, "estimator": estimate_label(f),
                                  "fit": f.to_dict()})
            if cfg.adversarial:
                fa = fit("adversarial", k)
                raw_a = max(fa.value, 0.0)
                # A larger estimate of the same supremum is also an estimate of it: never below the paper's.
                run_a = max(run_a, raw_a, run_r)
                out["adversarial"].append({
                    "eps": float(eps), "omega": run_a, "omega_raw": raw_a, "estimator": estimate_label(fa),
                    "ascent_max": float(records[k]["ascent"].max()), "random_max": float(records[k]["random"].max()),
                    "fit": fa.to_dict()})
        return out

    def per_image_omega() -> torch.Tensor:
        cols = [torch.cat([records[k]["random"], records[k]["ascent"]], dim=1).max(dim=1).values.clamp_min(0.0)
                for k in range(len(grid))]
        return torch.stack(cols, dim=1).cummax(dim=1).values

    def distances(ent: dict[str, list[dict[str, Any]]]) -> dict[str, torch.Tensor]:
        d = {"omega_distance": omega_distance(stats.loss, gnorm, grid, [e["omega"] for e in ent["random"]])}
        if cfg.adversarial:
            d["omega_distance_adversarial"] = omega_distance(stats.loss, gnorm, grid,
                                                             [e["omega"] for e in ent["adversarial"]])
        if cfg.omega_per_image:
            own = omega_distance(stats.loss[:n_omega], gnorm[:n_omega], grid, per_image_omega())
            full = torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
            full[:n_omega] = own
            d["omega_distance_adversarial_per_image"] = full
        return d

    for k, eps in enumerate(tqdm(grid, desc=f"omega({cfg.norm})", disable=not progress, leave=False)):
        measure(k, eps)
    ent = entries()
    dist = distances(ent)
    if cfg.omega_extend is not None:
        cap = box_diameter(x.shape[1:], cfg.norm)
        while grid[-1] < cap * (1 - 1e-12) and any(bool((v >= grid[-1]).any()) for v in dist.values()):
            grid.append(min(grid[-1] * cfg.omega_extend, cap))
            measure(len(grid) - 1, grid[-1])
            ent = entries()
            dist = distances(ent)
    top = grid[-1]

    lb = {m: l_bound(stats.loss.double(), lip[m].value) for m in lip}
    columns: dict[str, Any] = {
        "image": idx.numpy(),
        "label": y.cpu().numpy(),
        "prediction": stats.prediction.numpy(),
        "correct": stats.correct.numpy(),
        "loss": stats.loss.double().numpy(),
        "grad_norm_l2": stats.grad_norm_l2.double().numpy(),
        "grad_norm_l1": stats.grad_norm_l1.double().numpy(),
        "grad_norm": gnorm.double().numpy(),
        "l_bound_evt": lb["evt"].numpy(),
        "l_bound_empirical_max": lb["empirical-max"].numpy(),
        "l_bound": lb[cfg.lipschitz].numpy(),
    }
    for name, d in dist.items():
        columns[name] = d.numpy()
    columns["norm"] = cfg.norm
    for name, d in dist.items():  # the cap each distance hit: certified at the largest radius searched
        columns[f"{name}_at_cap"] = (d >= top).numpy()
    columns["omega_search_cap"] = top
    table = pd.DataFrame(columns)
    radii = cfg.resolved_radii
    correct = table["correct"].to_numpy()
    cert_cols = {
        "radius": list(radii),
        "omega_bound_error": list(certified_error(table["omega_distance"].to_numpy(), correct, radii).values()),
        "l_bound_error": list(certified_error(table["l_bound"].to_numpy(), correct, radii).values()),
    }
    for name in dist:
        if name != "omega_distance":
            key = name.replace("omega_distance_", "omega_") + "_bound_error"
            cert_cols[key] = list(certified_error(table[name].to_numpy(), correct, radii).values())
    cert = pd.DataFrame(cert_cols)
    evt: dict[str, Any] = {"norm": cfg.norm, "lipschitz": {m: f.to_dict() for m, f in lip.items()},
                           "lipschitz_estimator": {m: estimate_label(f) for m, f in lip.items()},
                           "omega": ent["random"]}
    if cfg.adversarial:
        evt["omega_adversarial"] = ent["adversarial"]
    result = BoundsResult(table=table, evt=evt, certified=cert)
    result.metrics = _metrics(result, cfg, stats)
    result.metrics["cost"] = cost
    return result


def fits_accepted(evt: dict[str, Any], cfg: BoundConfig | None = None) -> tuple[int, int]:
    """``(k, N)``: of the N extreme-value fits asked for (L with ``lipschitz='evt'`` and omega at every radius
    for every estimator, unless the config asked for the empirical maximum), how many were accepted and used."""
    fits = [evt["lipschitz"]["evt"]]
    for key in ("omega", "omega_adversarial"):
        fits += [e["fit"] for e in evt.get(key, [])]
    asked = [f for f in fits if f.get("reason") != "requested"]
    return sum(1 for f in asked if f.get("method") == "gev"), len(asked)


def _metrics(result: BoundsResult, cfg: BoundConfig, stats: ImageStatistics | None = None) -> dict[str, Any]:
    t = result.table
    omega = result.omega()
    m: dict[str, Any] = {
        "norm": cfg.norm,
        "n_images": int(len(t)),
        "clean_error": float(100.0 * (1.0 - t["correct"].mean())),
        "lipschitz_evt": float(result.evt["lipschitz"]["evt"]["value"]),
        "lipschitz_empirical_max": float(result.evt["lipschitz"]["empirical-max"]["value"]),
        "lipschitz_evt_method": result.evt["lipschitz"]["evt"]["method"],
        "mean_l_bound": float(t["l_bound"].mean()),
        "mean_l_bound_evt": float(t["l_bound_evt"].mean()),
        "mean_l_bound_empirical_max": float(t["l_bound_empirical_max"].mean()),
        "mean_omega_distance": float(t["omega_distance"].mean()),
        "grad_norm_mean": float(t["grad_norm"].mean()),
        "grad_norm_max": float(t["grad_norm"].max()),
        "grad_norm_l2_mean": float(t["grad_norm_l2"].mean()),
        "grad_norm_l2_max": float(t["grad_norm_l2"].max()),
        "omega_fits_rejected": int(sum(1 for e in result.evt["omega"] if e["fit"]["method"] != "gev")),
    }
    for r in cfg.resolved_radii:
        m[f"omega({r:g})"] = float(omega[min(omega, key=lambda e: abs(e - r))])
    for _, row in result.certified.iterrows():
        m[f"omega_bound_error@{row['radius']:g}"] = float(row["omega_bound_error"])
        m[f"l_bound_error@{row['radius']:g}"] = float(row["l_bound_error"])
    if cfg.norm == "l2":  # Table B.3 (measured in l2)
        m["regularity"] = {
            "grad_norm_mean": m["grad_norm_l2_mean"], "grad_norm_max": m["grad_norm_l2_max"],
            "omega(0.5)": float(omega[min(omega, key=lambda e: abs(e - 0.5))]),
            "omega(1)": float(omega[min(omega, key=lambda e: abs(e - 1.0))]),
        }
    # How every estimate was obtained (issue 13): the estimator actually used and the fits accepted.
    m["lipschitz_estimator"] = estimate_label(result.evt["lipschitz"][cfg.lipschitz])
    m["lipschitz_evt_estimator"] = estimate_label(result.evt["lipschitz"]["evt"])
    m["omega_estimators"] = ["random"] + (["adversarial"] if "omega_adversarial" in result.evt else [])
    k, n = fits_accepted(result.evt)
    m["fits_accepted_k"], m["fits_total"], m["fits_accepted"] = k, n, f"{k} of {n}"
    m["omega_search_cap"] = float(t["omega_search_cap"].iloc[0]) if "omega_search_cap" in t else float("nan")
    m["omega_distance_at_cap_percent"] = float(100.0 * t["omega_distance_at_cap"].mean())
    if "omega_adversarial" in result.evt:
        adv = {float(e["eps"]): float(e["omega"]) for e in result.evt["omega_adversarial"]}
        m["mean_omega_distance_adversarial"] = float(t["omega_distance_adversarial"].mean())
        m["omega_distance_adversarial_at_cap_percent"] = float(100.0 * t["omega_distance_adversarial_at_cap"].mean())
        m["omega_adversarial_fits_rejected"] = int(sum(1 for e in result.evt["omega_adversarial"]
                                                       if e["fit"]["method"] != "gev"))
        for r in cfg.resolved_radii:
            m[f"omega_adversarial({r:g})"] = float(adv[min(adv, key=lambda e: abs(e - r))])
        for _, row in result.certified.iterrows():
            m[f"omega_adversarial_bound_error@{row['radius']:g}"] = float(row["omega_adversarial_bound_error"])
        if "omega_distance_adversarial_per_image" in t:
            m["mean_omega_distance_adversarial_per_image"] = float(t["omega_distance_adversarial_per_image"].mean())
        if cfg.norm == "l2":
            m["regularity"]["omega_adversarial(0.5)"] = float(adv[min(adv, key=lambda e: abs(e - 0.5))])
            m["regularity"]["omega_adversarial(1)"] = float(adv[min(adv, key=lambda e: abs(e - 1.0))])
    return m


def _write(run: Any, result: BoundsResult) -> None:
    run.write_table("bounds.csv", result.table)
    run.write_json("evt.json", result.evt)
    run.write_table("certified_error.csv", result.certified)


def load_bounds(run: Any, cfg: BoundConfig | None = None) -> BoundsResult:
    """Load a finished bounds run (``bounds.csv``, ``evt.json``, ``certified_error.csv``, ``metrics.json``)."""
    if run.status != "finished":
        raise ConfigError(f"bounds run {run.path} is {run.status}, not finished; run `paperlib bound` first")
    table = run.read_table("bounds.csv")
    table["correct"] = table["correct"].astype(bool)
    return BoundsResult(
        table=table, evt=run.read_json("evt.json"), certified=run.read_table("certified_error.csv"),
        metrics=run.read_json("metrics.json") if run.exists("metrics.json") else {},
    )


def run_bounds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor | Sequence[int],
    cfg: BoundConfig,
    run: Any = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> BoundsResult:
    """L-bound, omega(eps) on a grid, omega-bound distance and certified error for every image.

    Args:
        model: logits model on [0, 1] inputs (eval mode is used; its mode is restored).
        x: images ``[n, C, H, W]``, finite and in [0, 1]; y: labels ``[n]`` in ``[0, K)``; idx: dataset indices
            ``[n]`` (the ``image`` column, which lines the table up with the attack suite's ``best.csv``).
        cfg: the :class:`BoundConfig` (``cfg.n_images`` must equal ``n``).
        run: a :class:`paperlib.runs.Run` for ``cfg`` (e.g. ``trained_run.subrun('bounds-l2', cfg)``), or None
            to compute without writing. A finished run with the same config is loaded, not recomputed; a
            partial one resumes from its checkpoint (per grid radius).
        force: recompute even if finished (the old directory is moved aside).
        progress: tqdm bars.
    """
    if not isinstance(cfg, BoundConfig):
        raise ConfigError(f"cfg must be a BoundConfig, got {type(cfg).__name__}")
    idx_t = _check_inputs(x, y, idx, cfg)
    if run is None:
        return _compute_bounds(model, x, y, idx_t, cfg, None, progress)
    from paperlib.runs import load_or_run

    if getattr(run, "hash", None) != config_hash(cfg):
        raise ConfigError(f"run {getattr(run, 'path', run)} was made for another config than cfg; "
                          "create it with this config (e.g. model_run.subrun(name, cfg))")

    holder: dict[str, BoundsResult] = {}

    def compute(r: Any) -> dict[str, Any]:
        r.log(f"bounds: {len(idx_t)} images, norm {cfg.norm}")
        result = _compute_bounds(model, x, y, idx_t, cfg, r, progress)
        _write(r, result)
        holder["result"] = result
        return result.metrics

    load_or_run(run, compute, force=force)
    result = holder.get("result") or load_bounds(run, cfg)
    if not np.array_equal(result.table["image"].to_numpy(), idx_t.numpy()):
        raise ConfigError(f"{run.path} holds bounds for other images than the ones given; use force to recompute")
    return result


def bound_config_from_dict(data: dict[str, Any]) -> BoundConfig:
    """Rebuild a :class:`BoundConfig` from its stored dict."""
    return config_from_dict(BoundConfig, data)
