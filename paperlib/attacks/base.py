"""The attack contract (foolbox-3 shape) and what every attack shares.

Every attack is an object built with keyword-only parameters (literature defaults) and called as

    result = attack(model, x, y, seed=0)                 # MinimizationAttack: smallest adversarial it finds
    result = attack(model, x, y, eps=0.5, seed=0)        # FixedEpsilonAttack: an adversarial inside the eps-ball

with ``x`` a batch ``[B, C, H, W]`` of images in [0, 1], ``y`` the labels ``[B]`` (int64) and ``model`` a module
returning logits ``[B, K]``. The contract, enforced here once for all attacks:

* images that are not finite or not in [0, 1], labels outside ``[0, K)``, logits not ``[B, K]`` and a linf
  ``eps`` above 1 are a :class:`~paperlib.config.ConfigError` (never an attack "success");
* ``x`` is never modified; the model is put in eval mode during the attack and its modes restored after;
* "adversarial" is decided by the attack's :class:`Misclassification` criterion (default top-1: the argmax
  is not the label; ``top_k=k``: the label is not among the k largest logits), for every internal success test
  and the final one alike;
* images the model already misclassifies (under the criterion) are not attacked: adversarial = x, success,
  distance 0;
* the returned adversarials are inside [0, 1] (and inside the eps-ball for fixed-eps attacks);
* success is *recomputed* from the returned adversarials with one final forward pass (an attack's internal
  bookkeeping is never trusted), and distances are recomputed from them in l2 and linf (float64); a failed
  image has distance ``inf``;
* every random draw comes from :class:`ImageNoise`: counter-based random numbers that depend only on
  ``(seed, image key, draw number)``, never on the batch the image sits in, so that an image attacked alone
  gives the same result as inside a batch. The key of an image defaults to a hash of its pixels; the suite
  passes dataset indices.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn

from paperlib.losses import logit_margin_loss, margin_loss
from paperlib.models import eval_mode
from paperlib.config import (
    ConfigError,
    check_labels,
    check_linf_eps,
    check_logits,
    check_unit_images,
    normalize_norm,
)

__all__ = [
    "Misclassification",
    "check_criterion",
    "AttackResult",
    "Attack",
    "FixedEpsilonAttack",
    "MinimizationAttack",
    "ImageNoise",
    "image_keys",
    "eval_mode",
    "predict",
    "logits_of",
    "distances",
]

_M32 = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# Batch-invariant random numbers
# --------------------------------------------------------------------------------------------------


def _hash32(h: Tensor) -> Tensor:
    """A 32-bit integer mixing function on int64 tensors holding values in [0, 2^32).

    Constants below 2^31 keep every product below 2^63 (no signed overflow).
    """
    h = h & _M32
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x5BD1E995) & _M32
    h = h ^ (h >> 13)
    h = (h * 0x2C1B3C6D) & _M32
    h = h ^ (h >> 16)
    return h


def image_keys(x: Tensor) -> Tensor:
    """A per-image int64 key in [0, 2^32) computed from the pixels (quantized to 2^-20), ``[B]``.

    The key does not depend on the batch or on the position in it.
    """
    flat = x.detach().flatten(1).to(torch.float64)
    q = torch.round(flat * 2.0**20).to(torch.int64)
    pos = _hash32(torch.arange(flat.shape[1], device=x.device, dtype=torch.int64) + 0x9E3779B9)
    h = _hash32((q & _M32) ^ pos)
    return _hash32(h.sum(dim=1) & _M32)


class ImageNoise:
    """Counter-based random numbers per image: draw ``stream`` for image ``key`` under ``seed``.

    ``uniform(stream, shape)`` returns ``[B, *shape]`` numbers in (0, 1); row ``b`` depends only on
    ``(seed, keys[b], stream)``. Attacks give every random draw its own ``stream`` number (e.g. the step
    index), so the numbers an image sees are the same alone or in any batch. ``stream`` may be an int or a
    per-row int64 tensor (an image's own draw counter). ``rows`` selects a subset of images (the attack's
    active ones) without changing what they draw.

    Args:
        seed: the attack's seed (recorded with the result by the suite).
        keys: int64 ``[B]`` per-image keys (see :func:`image_keys`).
        salt: separates the streams of different attacks under one seed.
    """

    def __init__(self, seed: int, keys: Tensor, salt: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed={seed!r} must be a non-negative integer")
        self.seed = seed
        self.keys = keys.to(torch.int64)
        self._counters: dict[int, Tensor] = {}
        s = torch.tensor([seed & _M32, (seed >> 32) & _M32], dtype=torch.int64, device=keys.device)
        salt_t = torch.tensor([salt & _M32], dtype=torch.int64, device=keys.device)
        self._base = _hash32(_hash32(_hash32(self.keys ^ _hash32(s[0:1])) + _hash32(s[1:2] + 0x51ED27)) ^ _hash32(salt_t))

    def _bits(self, stream: Union[int, Tensor], n: int, rows: Optional[Tensor]) -> Tensor:
        base = self._base if rows is None else self._base[rows]
        if isinstance(stream, Tensor):  # one stream number per row
            sh = stream.to(device=base.device, dtype=torch.int64).reshape(-1) & _M32
        else:
            sh = torch.tensor([stream & _M32], dtype=torch.int64, device=base.device)
        b = _hash32(base + _hash32(sh + 0x632BE5AB))  # [R]
        ctr = self._counters.get(n)
        if ctr is None:
            ctr = _hash32(torch.arange(n, device=base.device, dtype=torch.int64) * 2 + 1)
            self._counters[n] = ctr
        return _hash32(b[:, None] ^ ctr[None, :])  # [R, n]

    def uniform(self, stream: Union[int, Tensor], shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                rows: Optional[Tensor] = None) -> Tensor:
        """Uniform numbers in the open interval (0, 1), ``[R, *shape]``."""
        n = math.prod(shape)
        u = (self._bits(stream, n, rows).to(torch.float64) + 0.5) / 2.0**32
        return u.to(dtype).reshape(-1, *shape)

    def normal(self, stream: Union[int, Tensor], shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
               rows: Optional[Tensor] = None) -> Tensor:
        """Standard normal numbers (Box-Muller on two uniforms), ``[R, *shape]``."""
        n = math.prod(shape)
        bits = self._bits(stream, 2 * n, rows).to(torch.float64)
        u1 = (bits[:, :n] + 0.5) / 2.0**32
        u2 = (bits[:, n:] + 0.5) / 2.0**32
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        return z.to(dtype).reshape(-1, *shape)


# --------------------------------------------------------------------------------------------------
# The adversarial criterion
# --------------------------------------------------------------------------------------------------


class Misclassification:
    """The adversarial criterion: top-``k`` misclassification, "the label is not among the k largest logits".

    ``criterion(logits, y)`` is bool ``[B]``. An image's rank is the number of classes ranked before its label:
    those with a larger logit, and those with an equal logit and a smaller index (the order of a stable
    descending sort, which is the tie rule of ``argmax``: the first maximal index wins). The image is
    adversarial iff its rank is at least ``k``. ``top_k=1`` is computed as ``logits.argmax(dim=1) != y``, the
    attacks' test before the criterion existed, so it is that test bit for bit (and, on finite logits, the rank
    rule with ``k = 1``, tested).

    :meth:`margin` is the continuous counterpart the gradient attacks ascend or descend: ``Z_y`` minus the
    k-th largest other logit, positive while the label is still in the top k. It is minus
    :func:`~paperlib.losses.logit_margin_loss` (the package's one margin, which the bounds use with the same
    ``top_k``); for ``k = 1`` it is ``Z_y - max_{i != y} Z_i``, minus the ``max_{i != y} Z_i - Z_y`` of
    :func:`~paperlib.attacks.pgd.margin_loss`. A negative margin means adversarial and a positive one correct;
    at a margin of exactly 0 (a tie) the criterion above decides.

    Args:
        top_k: the ``k`` of top-k error (1: top-1; the imagenet profile uses 5, as its bounds). An integer
            ``>= 1`` (bools are refused); at call time it must be at most the number of classes minus one.
    """

    def __init__(self, top_k: int = 1) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k={top_k!r} must be an integer >= 1 (1: top-1 error)")
        self.top_k = top_k

    def __repr__(self) -> str:
        return f"Misclassification(top_k={self.top_k})"

    def check(self, num_classes: int) -> None:
        """A :class:`~paperlib.config.ConfigError` unless ``top_k <= num_classes - 1``."""
        if self.top_k > num_classes - 1:
            raise ConfigError(f"top_k={self.top_k} must be at most {num_classes - 1} for {num_classes} classes")

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        """Bool ``[B]``: the label ``y`` ``[B]`` is not among the ``top_k`` largest of ``logits`` ``[B, K]``."""
        if self.top_k == 1:
            return logits.argmax(dim=1) != y
        self.check(logits.shape[1])
        y = y.to(device=logits.device, dtype=torch.long)
        z_y = logits.gather(1, y[:, None])
        index = torch.arange(logits.shape[1], device=logits.device)[None, :]
        before = (logits > z_y) | ((logits == z_y) & (index < y[:, None]))
        return before.sum(dim=1) >= self.top_k

    def margin(self, logits: Tensor, y: Tensor, *, softmax: bool = False) -> Tensor:
        """``Z_y`` minus the ``top_k``-th largest other logit, ``[B]`` (positive: ``y`` is still in the top k).

        ``softmax=True``: the same on the probabilities ``softmax(logits)`` (minus
        :func:`~paperlib.losses.margin_loss`, the paper's evaluation loss; LogBarrier's barrier uses it).
        """
        return -(margin_loss if softmax else logit_margin_loss)(logits, y, self.top_k)


# the default criterion of every attack: top-1 misclassification
_TOP1 = Misclassification(1)


def check_criterion(criterion: Optional[Misclassification]) -> Misclassification:
    """``criterion`` (None: top-1), or a :class:`~paperlib.config.ConfigError` if it is not a
    :class:`~paperlib.attacks.base.Misclassification`."""
    if criterion is None:
        return _TOP1
    if not isinstance(criterion, Misclassification):
        raise ConfigError(f"criterion={criterion!r} must be a Misclassification(top_k=...) or None (top-1)")
    return criterion


# --------------------------------------------------------------------------------------------------
# Model helpers
# --------------------------------------------------------------------------------------------------




def logits_of(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """The model's logits ``[B, K]``, without gradients, in chunks of ``batch_size``; any other output shape
    is a :class:`~paperlib.config.ConfigError`."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            z = model(x[i:i + batch_size])
            check_logits(z, len(x[i:i + batch_size]))
            out.append(z)
    return torch.cat(out)


def predict(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Predicted labels ``[B]`` (argmax of the logits ``[B, K]``), without gradients, in chunks of ``batch_size``."""
    return logits_of(model, x, batch_size).argmax(dim=1)


def distances(adversarials: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """l2 and linf distances ``[B]`` (float64) between adversarials and originals."""
    d = (adversarials.detach().to(torch.float64) - x.detach().to(torch.float64)).flatten(1)
    return d.norm(p=2, dim=1), d.abs().amax(dim=1)


# --------------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------------


@dataclass
class AttackResult:
    """What an attack returns for a batch of ``B`` images.

    Attributes:
        adversarials: ``[B, C, H, W]`` in [0, 1]; for a failed image the attack's last iterate (inside the
            threat model) or the original image.
        success: bool ``[B]``: ``adversarials`` meet the attack's criterion (recomputed after the attack;
            :class:`~paperlib.attacks.base.Misclassification`, default top-1).
        dist_l2: float64 ``[B]``: l2 distance of the adversarial to the original; 0 for images misclassified
            at the start; ``inf`` where the attack failed.
        dist_linf: float64 ``[B]``: the same in linf.
        eps: float64 ``[B]`` or None: the radius of the ball the adversarial is guaranteed to lie in
            (fixed-eps attacks: their eps; minimal PGD: the radius at which it succeeded; ``inf`` if failed).
        norm: the norm the attack optimizes ('l2' or 'linf').
        clean_correct: bool ``[B]``: the original image does not meet the criterion (top-k correct).
    """

    adversarials: Tensor
    success: Tensor
    dist_l2: Tensor
    dist_linf: Tensor
    norm: str
    clean_correct: Tensor
    eps: Optional[Tensor] = None

    def distance(self, norm: str) -> Tensor:
        """The distances in ``norm`` ('l2'/'linf', case-insensitive), ``[B]``."""
        return self.dist_l2 if normalize_norm(norm) == "l2" else self.dist_linf

    def __len__(self) -> int:
        return len(self.success)


# --------------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------------

EpsLike = Union[float, Tensor]


class Attack(ABC):
    """Base of every attack: input checks, eval mode, clean-misclassified images, final verification.

    Subclasses implement :meth:`_attack` on the images the model classifies correctly (under
    :attr:`criterion`) and use :attr:`criterion` for every success test and margin of their own.
    """

    #: the adversarial criterion (:class:`~paperlib.attacks.base.Misclassification`; subclasses take it as
    #: the keyword ``criterion``, default top-1)
    criterion: Misclassification = _TOP1

    #: short name used in result tables ('pgd', 'cw', 'boundary', 'logbarrier')
    name: str = "attack"
    #: the norm the attack optimizes
    norm: str = "l2"
    #: separates this attack's random streams from other attacks' under the same seed
    _salt: int = 0

    def _prepare(self, model: nn.Module, x: Tensor, y: Tensor, keys: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        check_unit_images(x)
        if not isinstance(y, Tensor) or y.shape != x.shape[:1]:
            raise ConfigError(f"y must be a label tensor of shape [{x.shape[0]}], got "
                              f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
        y = y.to(device=x.device)
        if keys is None:
            keys = image_keys(x)
        else:
            keys = torch.as_tensor(keys, device=x.device).to(torch.int64).reshape(-1)
            if keys.shape != y.shape:
                raise ConfigError(f"keys must have shape [{len(y)}], got {tuple(keys.shape)}")
        return x.detach().clone(), y, keys

    def _finish(self, model: nn.Module, x: Tensor, y: Tensor, adv: Tensor, clean_correct: Tensor,
                eps: Optional[Tensor]) -> AttackResult:
        adv = adv.detach().clamp(0.0, 1.0)
        adv = torch.where(clean_correct.view(-1, *[1] * (x.dim() - 1)), adv, x)
        if eps is not None:
            adv = self._clip_to_ball(adv, x, eps)
        success = (self.criterion(logits_of(model, adv), y) if len(x)
                   else torch.zeros(0, dtype=torch.bool, device=x.device))
        d2, dinf = distances(adv, x)
        inf = torch.full_like(d2, math.inf)
        d2 = torch.where(success, d2, inf)
        dinf = torch.where(success, dinf, inf)
        return AttackResult(adversarials=adv, success=success, dist_l2=d2, dist_linf=dinf, norm=self.norm,
                            clean_correct=clean_correct, eps=eps)

    def _clip_to_ball(self, adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        from paperlib.attacks.norms import get_norm

        finite = torch.isfinite(eps)
        e = torch.where(finite, eps, torch.full_like(eps, 1e30)).to(x.dtype)
        return (x + get_norm(self.norm).project(adv - x, e)).clamp(0.0, 1.0)

    @abstractmethod
    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, noise: ImageNoise, rows: Tensor,
                **kwargs) -> tuple[Tensor, Optional[Tensor]]:
        """Attack the images ``x`` (all correctly classified); ``rows`` are their rows in ``noise``.

        Returns the adversarials (or last iterates) and, for ball-bounded attacks, the radius ``[R]``.
        """

    def _call(self, model: nn.Module, x: Tensor, y: Tensor, seed: int, keys: Optional[Tensor],
              **kwargs) -> AttackResult:
        x, y, keys = self._prepare(model, x, y, keys)
        noise = ImageNoise(seed, keys, self._salt)
        with eval_mode(model):
            if len(x):
                logits = logits_of(model, x)
                y = check_labels(y, logits.shape[1]).to(torch.int64)
                self.criterion.check(logits.shape[1])
                clean_correct = ~self.criterion(logits, y)
            else:
                y = y.to(torch.int64)
                clean_correct = torch.zeros(0, dtype=torch.bool)
            adv = x.clone()
            eps_out: Optional[Tensor] = None
            rows = clean_correct.nonzero().flatten()
            if rows.numel():
                sub_kwargs = {k: (v[rows] if isinstance(v, Tensor) and v.dim() >= 1 and len(v) == len(x) else v)
                              for k, v in kwargs.items()}
                a, e = self._attack(model, x[rows], y[rows], noise, rows, **sub_kwargs)
                adv[rows] = a.detach().to(x.dtype)
                if e is not None:
                    eps_out = torch.zeros(len(x), dtype=torch.float64, device=x.device)
                    eps_out[rows] = e.to(torch.float64)
            if eps_out is None and "eps" in kwargs:
                eps_out = torch.zeros(len(x), dtype=torch.float64, device=x.device)
            return self._finish(model, x, y, adv, clean_correct, eps_out)


class FixedEpsilonAttack(Attack):
    """An attack that looks for an adversarial inside the ``eps``-ball (problem (2) of the paper).

    Call as ``attack(model, x, y, eps=..., seed=0, keys=None)``; ``eps`` is a float or a per-image tensor
    ``[B]`` in input units. The returned adversarials lie inside the ball and inside [0, 1].
    """

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, eps: EpsLike, seed: int = 0,
                 keys: Optional[Tensor] = None) -> AttackResult:
        eps_t = torch.as_tensor(eps, dtype=torch.float64, device=x.device)
        if eps_t.dim() == 0:
            eps_t = eps_t.expand(len(x)).clone()
        if eps_t.shape != (len(x),) or not bool(torch.isfinite(eps_t).all()) or bool((eps_t < 0).any()):
            raise ConfigError(f"eps must be a finite non-negative number or a tensor of shape [{len(x)}]")
        if len(eps_t):
            check_linf_eps("eps", float(eps_t.max()), self.norm)
        result = self._call(model, x, y, seed, keys, eps=eps_t)
        # clean-misclassified images count as inside any ball
        result.eps = eps_t.clone()
        return result


class MinimizationAttack(Attack):
    """An attack that looks for the smallest adversarial it can (problem (1) of the paper).

    Call as ``attack(model, x, y, seed=0, keys=None)``; ``result.distance(norm)`` is the per-image distance.
    """

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int = 0,
                 keys: Optional[Tensor] = None) -> AttackResult:
        return self._call(model, x, y, seed, keys)
