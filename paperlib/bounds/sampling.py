"""Exactly uniform sampling in l2 and linf balls (used to estimate the modulus of continuity omega(eps)).

* l2 ball of radius ``eps`` in ``R^N``: ``v = eps * U^(1/N) * g / ||g||_2`` with ``g ~ N(0, I_N)`` and
  ``U ~ Uniform(0, 1)`` independent. The direction ``g/||g||`` is uniform on the sphere (rotation invariance
  of the Gaussian) and ``P(||v|| <= r) = (r/eps)^N``, the volume fraction of the ball of radius ``r``.
* linf ball: independent coordinates ``v_i ~ Uniform(-eps, eps)``.

Both samplers scale a sample of the unit ball by ``eps``, so ``eps`` may be a scalar or one radius per
sample. Every draw comes from an explicit ``torch.Generator`` (seeded by the caller and recorded with the
result), so a run is reproducible.

The threat model keeps images in [0, 1]. :func:`perturb_in_box` returns the clipped perturbation
``clip(x + v, 0, 1) - x``; since ``x`` itself lies in [0, 1], clipping moves every coordinate towards ``x``,
so the clipped perturbation is still inside the eps-ball (it is no longer uniform there: the box cuts the
ball, and the part of the ball outside the box is not part of the threat model).

The samplers themselves are the norms' (:meth:`paperlib.norms.Norm.sample_ball`,
:func:`paperlib.norms.sample_uniform_sphere`, :func:`paperlib.norms.perturb_in_box`); this module validates the
arguments of the bounds' calls and re-exports them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from paperlib.config import ConfigError, normalize_norm
from paperlib.norms import get_norm, perturb_in_box, sample_uniform_sphere

__all__ = ["sample_uniform_ball", "sample_uniform_sphere", "perturb_in_box", "make_generator"]


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} must be an integer")
    return torch.Generator(device=device).manual_seed(seed)


def _check_eps(eps: float | torch.Tensor, n: int) -> torch.Tensor:
    eps_t = torch.as_tensor(eps, dtype=torch.float64)
    if eps_t.ndim > 1 or (eps_t.ndim == 1 and eps_t.numel() != n):
        raise ConfigError(f"eps must be a scalar or have one value per sample ({n}); got shape {tuple(eps_t.shape)}")
    if not torch.isfinite(eps_t).all() or (eps_t <= 0).any():
        bad = eps if eps_t.ndim == 0 else eps_t[(eps_t <= 0) | ~torch.isfinite(eps_t)][0].item()
        raise ConfigError(f"eps={bad!r} must be a finite number > 0 (radius of the ball, in [0,1] pixel units)")
    return eps_t


def sample_uniform_ball(
    n: int,
    shape: Sequence[int],
    eps: float | torch.Tensor,
    norm: str,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` points uniform in the ``norm``-ball of radius ``eps`` in ``R^N``, ``N = prod(shape)``.

    Args:
        n: number of samples.
        shape: shape of one sample (e.g. ``[C, H, W]``).
        eps: radius > 0 in input units; a scalar or a tensor of ``n`` radii (one per sample).
        norm: 'l2' or 'linf' (case-insensitive).
        generator: the source of randomness (its device is where sampling happens).
        dtype: dtype of the result.

    Returns:
        Tensor ``[n, *shape]`` on ``generator.device``.
    """
    norm = normalize_norm(norm)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"n={n!r} must be a non-negative integer")
    eps_t = _check_eps(eps, n)
    return get_norm(norm).sample_ball(n, shape, eps_t, generator=generator, dtype=dtype)
