"""The norms of the paper, once: l1, l2 and linf as small strategy objects (MadryLab/robustness ``attack_steps``).

A threat model measures perturbations in a norm ``||.||`` (l2 or linf in the paper); the gradient penalty and the
bounds use its dual ``||.||_*`` (l2 -> l2, linf -> l1, l1 -> linf), for which Hoelder's inequality
``<g, v> <= ||v|| ||g||_*`` is tight. Everything an algorithm needs from a norm lives on its :class:`Norm`:

* :meth:`Norm.norm` (per sample, in the input's dtype) and :meth:`Norm.distance` (per sample, float64);
* ``Norm.dual_name``, :attr:`Norm.dual` and :meth:`Norm.dual_norm`: the dual norm, its name and its value;
* :meth:`Norm.project`: the closest point of the ball of radius ``eps`` (Euclidean projection);
* :meth:`Norm.direction` and :meth:`Norm.step`: the steepest-ascent direction ``argmax_{||v|| <= 1} <g, v>``
  (``g/||g||_2``, ``sign g``, or the largest coordinate of ``g`` for l1) and a step of a given length along it;
* :meth:`Norm.random_perturb`, :meth:`Norm.random_start`, :meth:`Norm.sample_ball`: points uniform in the ball
  (from caller-supplied draws, as the attacks' per-image streams; from a generator in the input's dtype, as the
  adversarial-training random start; from a generator in float64, as the bounds' samples of omega);
* :meth:`Norm.sample_extreme`: random extreme points of the unit ball (the sphere, the corners, the vertices);
* :meth:`Norm.box_diameter`: the diameter of the [0, 1] box; :func:`perturb_in_box` clips a perturbation to it.

Tensors are batches ``[B, ...]``; a radius or step size is a number or one value per sample ``[B]``, in input
units (pixels in [0, 1]). A number stays a Python number in the arithmetic (so the training loops' scalar radii
round exactly as they always did); a per-sample tensor is cast to the input's dtype.

Which formula each operation uses is fixed by the committed results: the attacks' l2 step is
``g * (s / ||g||)`` and their ball sample ``g/||g|| * (eps U^(1/N))``; the bounds' ball sample is computed in
float64 as ``(g/||g|| U^(1/N)) eps``. Changing either order would change stored numbers in the last bit, so both
are kept. ``tests/test_norms.py`` checks that every output of the code that moved here is bit-identical to what
it was before, except l2 adversarial training (no committed run), which now takes the attacks' l2 step and random
start and so rounds as they do.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import Tensor

from paperlib.config import ConfigError

__all__ = [
    "NORMS",
    "ATTACK_NORMS",
    "Norm",
    "L1",
    "L2",
    "Linf",
    "get_norm",
    "norm_name",
    "dual_norm_name",
    "perturb_in_box",
    "sample_uniform_sphere",
]

#: The norms, by the name used in configs ('l1' is a penalty norm only; attacks use 'l2' and 'linf').
NORMS = ("l1", "l2", "linf")
#: The norms the paper's attacks and bounds measure perturbations in.
ATTACK_NORMS = ("l2", "linf")


def norm_name(norm: str) -> str:
    """``norm`` in lower case if it is one of :data:`NORMS` (case-insensitive), else a ConfigError."""
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise ConfigError(f"norm={norm!r} is not allowed; choose one of 'l1', 'l2', 'linf' (case-insensitive)")
    return norm.lower()


def _kd(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector ``[B]`` to broadcast against ``like`` ``[B, ...]`` (in ``like``'s dtype)."""
    return v.to(like.dtype).view(-1, *[1] * (like.dim() - 1))


def _per_sample(v: float | Tensor, like: Tensor) -> float | Tensor:
    """A number as a Python float, a per-sample tensor ``[B]`` shaped to broadcast against ``like``."""
    return _kd(v, like) if isinstance(v, Tensor) else float(v)


def _per_row(v: float | Tensor, like: Tensor) -> float | Tensor:
    """A number as a Python float, a per-sample tensor ``[B]`` in ``like``'s dtype (for ``[B]`` arithmetic)."""
    return v.to(like.dtype) if isinstance(v, Tensor) else float(v)


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) for s in shape)


def sample_uniform_sphere(n: int, shape: Sequence[int], *, generator: torch.Generator,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` directions uniform on the unit l2 sphere of ``R^N``, ``N = prod(shape)``; shape ``[n, *shape]``.

    ``g / ||g||_2`` for ``g ~ N(0, I_N)`` drawn in float64 on ``generator.device`` (rotation invariance of the
    Gaussian); a zero draw (probability 0) gives the first basis vector, never NaN.
    """
    shape = _check_shape(shape)
    g = torch.randn((n, *shape), generator=generator, device=generator.device, dtype=torch.float64)
    flat = g.reshape(n, math.prod(shape))
    norms = flat.norm(dim=1, keepdim=True)
    flat = torch.where(norms > 0, flat / norms.clamp_min(1e-300), torch.zeros_like(flat))
    flat[(norms.squeeze(1) == 0), 0] = 1.0
    return flat.view(n, *shape).to(dtype)


def perturb_in_box(x: Tensor, v: Tensor) -> Tensor:
    """The perturbation actually applied when ``x + v`` is clipped to [0, 1]: ``clip(x + v, 0, 1) - x``.

    Shapes of ``x`` and ``v`` broadcast. Since ``x`` is in [0, 1], clipping moves every coordinate towards ``x``:
    ``||result|| <= ||v||`` in every norm, so a point of the ball stays in the ball.
    """
    return (x + v).clamp(0.0, 1.0) - x


class Norm(ABC):
    """A norm on perturbations ``[B, ...]`` (each sample flattened) and what the algorithms need of it.

    Attributes:
        name: ``'l1'``, ``'l2'`` or ``'linf'``.
        ord: the order ``p`` of the norm, as :func:`torch.linalg.vector_norm` takes it.
        dual_name: the name of the dual norm (``1/p + 1/q = 1``).
    """

    name: str
    ord: float
    dual_name: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ---- values ----------------------------------------------------------------------------------

    def norm(self, v: Tensor) -> Tensor:
        """``||v_b||`` per sample in ``v``'s dtype, ``[B]``."""
        return torch.linalg.vector_norm(v.flatten(1), self.ord, dim=1)

    def distance(self, delta: Tensor) -> Tensor:
        """``||delta_b||`` per sample, computed and returned in float64, ``[B]`` (the distances we report)."""
        return self.norm(delta.to(torch.float64))

    @property
    def dual(self) -> Norm:
        """The dual norm ``||g||_* = sup_{||v|| <= 1} <g, v>``."""
        return get_norm(self.dual_name)

    def dual_norm(self, g: Tensor) -> Tensor:
        """``||g_b||_*`` per sample in ``g``'s dtype, ``[B]``."""
        return self.dual.norm(g)

    @abstractmethod
    def squared_norm(self, v: Tensor) -> Tensor:
        """``||v_b||^2`` per sample, written so that its gradient exists everywhere (double backpropagation)."""

    @abstractmethod
    def box_diameter(self, shape: Sequence[int]) -> float:
        """Diameter of the [0, 1] box of inputs of ``shape``: no two images are further apart."""

    @abstractmethod
    def l2_radius_squared(self, dim: int) -> int:
        """``max_{||v|| <= 1} ||v||_2^2`` in ``R^dim``: the squared l2 length of the unit ball's extreme points."""

    # ---- geometry --------------------------------------------------------------------------------

    @abstractmethod
    def project(self, delta: Tensor, eps: float | Tensor) -> Tensor:
        """The closest point (in l2) to ``delta`` in the ball of radius ``eps`` (a number or ``[B]``)."""

    @abstractmethod
    def direction(self, g: Tensor) -> Tensor:
        """The steepest-ascent direction ``v`` with ``||v|| = 1`` and ``<g, v> = ||g||_*`` (0 where ``g = 0``)."""

    def step(self, grad: Tensor, step_size: float | Tensor) -> Tensor:
        """The steepest-ascent step of length ``step_size`` (a number or ``[B]``) for gradient ``grad``."""
        return self.direction(grad) * _per_sample(step_size, grad)

    # ---- sampling --------------------------------------------------------------------------------

    @abstractmethod
    def random_perturb(self, gauss: Tensor | None, unif: Tensor, eps: float | Tensor) -> Tensor:
        """A point uniform in the ball of radius ``eps``, from draws the caller supplies.

        ``gauss`` (standard normal, ``[B, ...]``; unused by linf, may be None there) and ``unif`` (uniform in
        (0, 1), ``[B, ...]``; l2 uses one value per sample and also accepts ``[B]``) come from the caller (see
        :class:`paperlib.attacks.base.ImageNoise`), so that the result is seeded per image.
        """

    @abstractmethod
    def _draws(self, like: Tensor, generator: torch.Generator | None) -> tuple[Tensor | None, Tensor]:
        """The ``(gauss, unif)`` :meth:`random_start` draws, in ``like``'s dtype, on the generator's device."""

    def random_start(self, like: Tensor, eps: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A point uniform in the ball of radius ``eps`` per sample of ``like`` ``[B, ...]``, drawn from
        ``generator`` (the global one if None) in ``like``'s dtype and moved to its device."""
        gauss, unif = self._draws(like, generator)
        gauss = gauss.to(like.device) if gauss is not None else None
        return self.random_perturb(gauss, unif.to(like.device), eps)

    @abstractmethod
    def _unit_ball(self, n: int, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """``n`` float64 points uniform in the unit ball, ``[n, *shape]`` on the generator's device."""

    def sample_ball(self, n: int, shape: Sequence[int], eps: float | Tensor, *, generator: torch.Generator,
                    dtype: torch.dtype = torch.float32) -> Tensor:
        """``n`` points uniform in the ball of radius ``eps`` (a number or ``[n]``), ``[n, *shape]``.

        Drawn and scaled in float64 on ``generator.device``, then cast to ``dtype`` (the bounds' sampler,
        :func:`paperlib.bounds.sampling.sample_uniform_ball`, which also validates the arguments).
        """
        shape = _check_shape(shape)
        unit = self._unit_ball(n, shape, generator)
        eps_t = torch.as_tensor(eps, dtype=torch.float64).to(generator.device)
        scale = eps_t.view(-1, *([1] * len(shape))) if eps_t.ndim == 1 else eps_t
        return (unit * scale).to(dtype)

    @abstractmethod
    def sample_extreme(self, n: int, shape: Sequence[int], *, generator: torch.Generator) -> Tensor:
        """``n`` random extreme points of the unit ball (float64, ``[n, *shape]``): where a linear function of
        ``v`` is largest over the ball, so good starts for an ascent."""


class L2(Norm):
    """The Euclidean norm: normalized-gradient steps, projection by rescaling, self-dual."""

    name, ord, dual_name = "l2", 2.0, "l2"

    def squared_norm(self, v: Tensor) -> Tensor:
        return v.flatten(1).pow(2).sum(dim=1)

    def box_diameter(self, shape: Sequence[int]) -> float:
        return math.sqrt(math.prod(_check_shape(shape)))

    def l2_radius_squared(self, dim: int) -> int:
        return 1

    def project(self, delta: Tensor, eps: float | Tensor) -> Tensor:
        n = self.norm(delta)
        # min(eps / ||delta||, 1): equal to where(||delta|| > eps, eps / ||delta||, 1), rounding included
        factor = (_per_row(eps, n) / n.clamp_min(1e-30)).clamp(max=1.0)
        return delta * _kd(factor, delta)

    def direction(self, g: Tensor) -> Tensor:
        n = _kd(self.norm(g), g)
        nonzero = n > 0
        return torch.where(nonzero, g / torch.where(nonzero, n, torch.ones_like(n)), torch.zeros_like(g))

    def step(self, grad: Tensor, step_size: float | Tensor) -> Tensor:
        # grad * (s / ||grad||), the order the attacks' committed results were computed in; a zero gradient
        # gives a zero step (never NaN)
        n = self.norm(grad)
        scale = torch.where(n > 0, _per_row(step_size, n) / n.clamp_min(1e-30), torch.zeros_like(n))
        return grad * _kd(scale, grad)

    def random_perturb(self, gauss: Tensor | None, unif: Tensor, eps: float | Tensor) -> Tensor:
        if gauss is None:
            raise ConfigError("the l2 random perturbation needs Gaussian draws (gauss=None)")
        # direction uniform on the sphere, radius eps * U^(1/D): uniform in the ball
        d = gauss[0].numel()
        direction = gauss / _kd(self.norm(gauss).clamp_min(1e-30), gauss)
        radius = _per_row(eps, gauss) * unif.reshape(unif.shape[0], -1)[:, 0] ** (1.0 / d)
        return direction * _kd(radius, gauss)

    def _draws(self, like, generator):
        dev = generator.device if generator is not None else like.device
        gauss = torch.randn(like.shape, generator=generator, device=dev, dtype=like.dtype)
        return gauss, torch.rand(like.shape[0], generator=generator, device=dev, dtype=like.dtype)

    def _unit_ball(self, n, shape, generator):
        direction = sample_uniform_sphere(n, shape, generator=generator, dtype=torch.float64)
        radius = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
        return direction * radius.pow(1.0 / math.prod(shape)).view(n, *([1] * len(shape)))

    def sample_extreme(self, n, shape, *, generator):
        return sample_uniform_sphere(n, shape, generator=generator, dtype=torch.float64)


class Linf(Norm):
    """The max norm: sign-gradient steps, projection by clipping each pixel; dual to l1."""

    name, ord, dual_name = "linf", math.inf, "l1"

    def squared_norm(self, v: Tensor) -> Tensor:
        return v.flatten(1).abs().amax(dim=1).pow(2)

    def box_diameter(self, shape: Sequence[int]) -> float:
        return 1.0

    def l2_radius_squared(self, dim: int) -> int:
        return int(dim)

    def project(self, delta: Tensor, eps: float | Tensor) -> Tensor:
        e = _per_sample(eps, delta)
        return delta.clamp(-e, e)

    def direction(self, g: Tensor) -> Tensor:
        return g.sign()

    def random_perturb(self, gauss: Tensor | None, unif: Tensor, eps: float | Tensor) -> Tensor:
        return (2.0 * unif - 1.0) * _per_sample(eps, unif)

    def _draws(self, like, generator):
        dev = generator.device if generator is not None else like.device
        return None, torch.rand(like.shape, generator=generator, device=dev, dtype=like.dtype)

    def _unit_ball(self, n, shape, generator):
        return torch.rand((n, *shape), generator=generator, device=generator.device, dtype=torch.float64) * 2.0 - 1.0

    def sample_extreme(self, n, shape, *, generator):
        u = torch.rand((n, *_check_shape(shape)), generator=generator, device=generator.device, dtype=torch.float64)
        return u.mul(2).sub(1).sign()


class L1(Norm):
    """The l1 norm: steps on the largest gradient coordinate, projection by soft thresholding; dual to linf."""

    name, ord, dual_name = "l1", 1.0, "linf"

    def squared_norm(self, v: Tensor) -> Tensor:
        return v.flatten(1).abs().sum(dim=1).pow(2)

    def box_diameter(self, shape: Sequence[int]) -> float:
        return float(math.prod(_check_shape(shape)))

    def l2_radius_squared(self, dim: int) -> int:
        return 1

    def project(self, delta: Tensor, eps: float | Tensor) -> Tensor:
        # Duchi, Shalev-Shwartz, Singer & Chandra (2008), Fig. 1: soft-threshold |delta| at the theta for which
        # the result has l1 norm eps; rows already inside the ball are returned unchanged.
        flat = delta.flatten(1)
        e = _per_row(eps, flat)
        e = e if isinstance(e, Tensor) else torch.full((flat.shape[0],), e, dtype=flat.dtype, device=flat.device)
        a = flat.abs()
        u = a.sort(dim=1, descending=True).values
        css = u.cumsum(dim=1)
        j = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
        rho = ((u - (css - e[:, None]) / j) > 0).sum(dim=1).clamp_min(1)
        theta = ((css.gather(1, (rho - 1)[:, None]).squeeze(1) - e) / rho.to(flat.dtype)).clamp_min(0)
        out = flat.sign() * (a - theta[:, None]).clamp_min(0)
        inside = self.norm(flat) <= e
        return torch.where(inside[:, None], flat, out).view_as(delta)

    def direction(self, g: Tensor) -> Tensor:
        flat = g.flatten(1)
        idx = flat.abs().argmax(dim=1, keepdim=True)
        return torch.zeros_like(flat).scatter(1, idx, flat.gather(1, idx).sign()).view_as(g)

    def random_perturb(self, gauss: Tensor | None, unif: Tensor, eps: float | Tensor) -> Tensor:
        # (E_1..E_N) / (E_0 + ... + E_N) with iid Exp(1) is uniform in the simplex {v >= 0, sum v <= 1}, and
        # independent random signs make it uniform in the l1 ball. E_i = -log U_i; E_0 = (g_1^2 + g_2^2) / 2 is
        # Exp(1) and independent of the signs sign(g) (a normal's magnitude is independent of its sign).
        if gauss is None or gauss[0].numel() < 2:
            raise ConfigError("the l1 random perturbation needs Gaussian draws of at least 2 coordinates")
        flat_g = gauss.flatten(1)
        e = -torch.log(unif.flatten(1))
        e0 = 0.5 * (flat_g[:, 0] ** 2 + flat_g[:, 1] ** 2)
        v = flat_g.sign() * e / (e.sum(dim=1) + e0)[:, None]
        return (v * _per_sample(eps, v)).view_as(gauss)

    def _draws(self, like, generator):
        dev = generator.device if generator is not None else like.device
        gauss = torch.randn(like.shape, generator=generator, device=dev, dtype=like.dtype)
        return gauss, torch.rand(like.shape, generator=generator, device=dev, dtype=like.dtype)

    def _unit_ball(self, n, shape, generator):
        gauss = torch.randn((n, *shape), generator=generator, device=generator.device, dtype=torch.float64)
        unif = torch.rand((n, *shape), generator=generator, device=generator.device, dtype=torch.float64)
        return self.random_perturb(gauss, unif, 1.0)

    def sample_extreme(self, n, shape, *, generator):
        shape = _check_shape(shape)
        dim = math.prod(shape)
        idx = torch.randint(0, dim, (n, 1), generator=generator, device=generator.device)
        sign = torch.rand((n, 1), generator=generator, device=generator.device, dtype=torch.float64).mul(2).sub(1)
        out = torch.zeros((n, dim), dtype=torch.float64, device=generator.device)
        return out.scatter(1, idx, sign.sign()).view(n, *shape)


_NORMS: dict[str, Norm] = {"l1": L1(), "l2": L2(), "linf": Linf()}


def get_norm(norm: str) -> Norm:
    """The :class:`Norm` named ``norm`` ('l1', 'l2' or 'linf', case-insensitive; ConfigError otherwise)."""
    return _NORMS[norm_name(norm)]


def dual_norm_name(norm: str) -> str:
    """The dual of ``norm``: ``'l2' -> 'l2'``, ``'linf' -> 'l1'``, ``'l1' -> 'linf'`` (case-insensitive)."""
    return get_norm(norm).dual_name
