"""The threat-model norms as strategies (MadryLab/robustness ``attack_steps`` shape).

An attack is written once and gets its norm as an object with ``distance``, ``project``, ``step`` and
``random_perturb``. All tensors are batches ``[B, ...]``; radii and step sizes are per image ``[B]``, in
input units (pixels in [0, 1]).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from paperlib.config import normalize_norm

__all__ = ["Norm", "L2", "Linf", "get_norm"]


def _kd(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-image vector ``[B]`` to broadcast against ``like`` ``[B, ...]``."""
    return v.to(like.dtype).view(-1, *[1] * (like.dim() - 1))


class Norm(ABC):
    """A norm ``||.||`` on perturbations and the operations projected gradient methods need."""

    name: str

    @abstractmethod
    def distance(self, delta: Tensor) -> Tensor:
        """``||delta_b||`` per image, ``[B]``."""

    @abstractmethod
    def project(self, delta: Tensor, eps: Tensor) -> Tensor:
        """The closest point to ``delta`` in the ball of radius ``eps`` ``[B]`` (Euclidean projection)."""

    @abstractmethod
    def step(self, grad: Tensor, step_size: Tensor) -> Tensor:
        """The steepest-ascent step of length ``step_size`` ``[B]`` in this norm for gradient ``grad``."""

    @abstractmethod
    def random_perturb(self, gauss: Tensor, unif: Tensor, eps: Tensor) -> Tensor:
        """A random point uniformly distributed in the ball of radius ``eps``.

        ``gauss`` (standard normal) and ``unif`` (uniform in (0, 1)) are ``[B, ...]`` draws supplied by the
        caller (see :class:`paperlib.attacks.base.ImageNoise`) so that the result is seeded per image.
        """


class L2(Norm):
    """The Euclidean norm: normalized-gradient steps, projection by rescaling."""

    name = "l2"

    def distance(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).norm(p=2, dim=1)

    def project(self, delta: Tensor, eps: Tensor) -> Tensor:
        n = self.distance(delta)
        factor = torch.where(n > eps.to(n.dtype), eps.to(n.dtype) / n.clamp_min(1e-30), torch.ones_like(n))
        return delta * _kd(factor, delta)

    def step(self, grad: Tensor, step_size: Tensor) -> Tensor:
        n = self.distance(grad)
        # a zero gradient gives a zero step (never NaN)
        scale = torch.where(n > 0, step_size.to(n.dtype) / n.clamp_min(1e-30), torch.zeros_like(n))
        return grad * _kd(scale, grad)

    def random_perturb(self, gauss: Tensor, unif: Tensor, eps: Tensor) -> Tensor:
        # direction uniform on the sphere, radius eps * U^(1/D): uniform in the ball
        d = gauss[0].numel()
        direction = gauss / _kd(self.distance(gauss).clamp_min(1e-30), gauss)
        radius = eps.to(gauss.dtype) * unif.flatten(1)[:, 0] ** (1.0 / d)
        return direction * _kd(radius, gauss)


class Linf(Norm):
    """The max norm: sign-gradient steps, projection by clipping each pixel."""

    name = "linf"

    def distance(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).abs().amax(dim=1)

    def project(self, delta: Tensor, eps: Tensor) -> Tensor:
        e = _kd(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)

    def step(self, grad: Tensor, step_size: Tensor) -> Tensor:
        return grad.sign() * _kd(step_size, grad)

    def random_perturb(self, gauss: Tensor, unif: Tensor, eps: Tensor) -> Tensor:
        return (2.0 * unif - 1.0) * _kd(eps, unif)


_NORMS = {"l2": L2(), "linf": Linf()}


def get_norm(norm: str) -> Norm:
    """The :class:`Norm` strategy for 'l2' or 'linf' (case-insensitive; ConfigError otherwise)."""
    return _NORMS[normalize_norm(norm)]
