"""The four training methods the paper compares, one step function each.

* ``undefended`` -- plain cross-entropy, :class:`Standard`;
* ``penalty`` -- cross-entropy plus the squared-norm input-gradient penalty of eq. 8, by finite differences
  (Algorithm 1) or double backpropagation, :class:`Regularized` (wraps :class:`paperlib.regularizers.GradientPenalty`);
* ``pgd-at`` -- Madry et al. (2017) adversarial training, :class:`PGDAdversarialTraining`;
* ``free-at`` -- "adversarial training for free" (Shafahi et al. 2019), :class:`FreeAdversarialTraining`.

Every method's :meth:`step` does one optimizer update (``m`` of them for free AT) on one minibatch and returns
detached statistics. Before any backward it hands its loss to ``check_loss``, which raises if the loss is
not finite, so a diverged step never reaches the weights.

**Which PGD variant.** The paper says it trains "using the hyperparameters in Madry et al. (2017)" (7 steps,
linf ball of radius 8/255 or 2/255). The authors' released code (cfinlay/tulip, ``adversarial-training.py``)
differs from Madry's recipe: no random start, no clamp to [0, 1], steps of ``0.43/sqrt(N)`` (1.98/255 for
CIFAR-10). We follow Madry's recipe, which the paper names: random start (uniform in the ball), 7 signed
steps of ``eps/4`` (2/255 at eps 8/255), projection onto the ball and onto [0, 1] after every step. The
authors' variant is one flag away (``random_start=False``). The attack runs with the model in train mode, as
in both codes (BatchNorm then updates running statistics on the attack's forwards too, unless
``bn_guard=True``). The ball's random start, steps and projection are those of the attacks' PGD
(:class:`paperlib.norms.Norm`, one code for both); only the loop differs (no per-image early stop here, a
seeded generator instead of per-image noise streams, optional BatchNorm guard).

**Free AT.** Each minibatch is replayed ``m`` times; every replay does one forward/backward that yields both
the parameter gradient (one SGD step) and the input gradient (one signed step of size ``eps`` on the
perturbation ``delta``, clipped to the ball). ``delta`` persists across minibatches (and is checkpointed),
and the number of epochs is divided by ``m`` (done by the engine), so the total work equals standard training.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from paperlib.config import ConfigError
from paperlib.losses import cross_entropy
from paperlib.norms import Norm, get_norm, perturb_in_box
from paperlib.regularizers import GradientPenalty, frozen_batchnorm_stats

__all__ = [
    "METHODS",
    "TRAINING_NORMS",
    "training_norm",
    "pgd_perturbation",
    "TrainingMethod",
    "Standard",
    "Regularized",
    "PGDAdversarialTraining",
    "FreeAdversarialTraining",
    "build_method",
]

#: Training methods by the name used in configs and on the command line.
METHODS = ("undefended", "penalty", "pgd-at", "free-at")

CheckLoss = Callable[[torch.Tensor], None]
Stats = dict[str, torch.Tensor]


def _no_check(loss: torch.Tensor) -> None:
    return None


# --------------------------------------------------------------------------------------------------
# The adversarial-training norms: the attacks' projection and step (paperlib.norms)
# --------------------------------------------------------------------------------------------------

#: Norms of the adversarial-training balls.
TRAINING_NORMS = ("linf", "l2")


def training_norm(norm: str) -> Norm:
    """The :class:`~paperlib.norms.Norm` of an adversarial-training ball: ``'linf'`` or ``'l2'``."""
    if not isinstance(norm, str) or norm not in TRAINING_NORMS:
        raise ConfigError(f"adversarial training norm={norm!r} is not allowed; choose 'linf' or 'l2'")
    return get_norm(norm)


def pgd_perturbation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "linf", eps: float = 8 / 255,
                     step_size: float = 2 / 255, steps: int = 7, random_start: bool = True,
                     generator: torch.Generator | None = None, bn_guard: bool = False,
                     loss_fn=cross_entropy) -> torch.Tensor:
    """Madry et al.'s PGD: ``steps`` ascent steps on the cross-entropy inside the ``eps``-ball and [0, 1].

    Returns the adversarial inputs ``x_adv`` (detached, same shape as ``x``, in [0, 1], ``||x_adv - x|| <= eps``).
    Only input gradients are computed (no parameter gradients). The model is used in its current mode.
    """
    ball = training_norm(norm)
    x = x.detach()
    delta = ball.random_start(x, eps, generator) if random_start else torch.zeros_like(x)
    delta = perturb_in_box(x, delta).detach()
    with frozen_batchnorm_stats(model, bn_guard):
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = loss_fn(model(x + delta), y).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            delta = ball.project(delta.detach() + ball.step(grad, step_size), eps)
            delta = perturb_in_box(x, delta).detach()
    return (x + delta).detach()


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------


class TrainingMethod(Protocol):
    name: str
    #: optimizer steps per minibatch (free AT: m)
    replays: int

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
             check_loss: CheckLoss = _no_check, generator: torch.Generator | None = None) -> Stats: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


class _Stateless:
    replays = 1

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


class Standard(_Stateless):
    """Undefended training: mean cross-entropy, one backward, one step."""

    name = "undefended"

    def step(self, model, optimizer, x, y, *, check_loss=_no_check, generator=None) -> Stats:
        optimizer.zero_grad(set_to_none=True)
        loss = cross_entropy(model(x), y).mean()
        check_loss(loss)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), "clean_loss": loss.detach()}


class Regularized(_Stateless):
    """Gradient-regularized training: ``out = penalty(model, x, y); out.loss.backward(); optimizer.step()``.

    Args:
        penalty: the :class:`~paperlib.regularizers.GradientPenalty` (FD or DBP, l2 or l1, lam, h).
    """

    name = "penalty"

    def __init__(self, penalty: GradientPenalty) -> None:
        self.penalty = penalty

    def step(self, model, optimizer, x, y, *, check_loss=_no_check, generator=None) -> Stats:
        optimizer.zero_grad(set_to_none=True)
        out = self.penalty(model, x, y)
        check_loss(out.loss)
        # Gradients for the parameters only: the penalty's internal input leaf needs none (saves the first
        # layer's input-gradient in the final backward).
        torch.autograd.backward(out.loss, inputs=_trainable(model))
        optimizer.step()
        return {"loss": out.loss.detach(), "clean_loss": out.clean_loss, "penalty": out.penalty,
                "grad_norm": out.grad_norm}


class PGDAdversarialTraining(_Stateless):
    """Madry et al. (2017) adversarial training: train on PGD adversarials of each minibatch.

    Args:
        norm: ``'linf'`` (the paper) or ``'l2'``.
        eps: ball radius in [0, 1] pixel units (paper: 8/255 and 2/255).
        steps: PGD steps (7).
        step_size: PGD step (eps/4, i.e. 2/255 at eps 8/255).
        random_start: start uniformly in the ball (Madry) or at x (authors' code).
        bn_guard: keep the attack's forwards from updating BatchNorm running statistics.
    """

    name = "pgd-at"

    def __init__(self, *, norm: str = "linf", eps: float = 8 / 255, steps: int = 7, step_size: float = 2 / 255,
                 random_start: bool = True, bn_guard: bool = False) -> None:
        self.norm, self.eps, self.steps, self.step_size = norm, eps, steps, step_size
        self.random_start, self.bn_guard = random_start, bn_guard
        training_norm(norm)

    def step(self, model, optimizer, x, y, *, check_loss=_no_check, generator=None) -> Stats:
        attack_model = getattr(model, "module", model)  # input gradients only: bypass DDP's reducer
        x_adv = pgd_perturbation(attack_model, x, y, norm=self.norm, eps=self.eps, step_size=self.step_size,
                                 steps=self.steps, random_start=self.random_start, generator=generator,
                                 bn_guard=self.bn_guard)
        optimizer.zero_grad(set_to_none=True)
        loss = cross_entropy(model(x_adv), y).mean()
        check_loss(loss)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}


class FreeAdversarialTraining:
    """Shafahi et al. (2019) free adversarial training: ``m`` replays per minibatch, persistent ``delta``.

    Args:
        norm: ``'linf'`` (the paper) or ``'l2'``.
        eps: ball radius in [0, 1] pixel units; also the step on ``delta`` (as in Shafahi et al.).
        m: replays per minibatch (paper: 2 and 8).
    """

    name = "free-at"

    def __init__(self, *, norm: str = "linf", eps: float = 8 / 255, m: int = 8) -> None:
        self.norm, self.eps, self.replays = norm, eps, m
        self.ball = training_norm(norm)
        self.delta: torch.Tensor | None = None

    def state_dict(self) -> dict:
        return {"delta": self.delta.detach().cpu() if self.delta is not None else None}

    def load_state_dict(self, state: dict) -> None:
        delta = state.get("delta")
        self.delta = delta.clone() if delta is not None else None

    def _delta_for(self, x: torch.Tensor) -> torch.Tensor:
        if self.delta is None or self.delta.shape[1:] != x.shape[1:]:
            self.delta = torch.zeros_like(x)
        self.delta = self.delta.to(device=x.device, dtype=x.dtype)
        if self.delta.shape[0] < x.shape[0]:  # a larger batch than before: pad with zeros
            pad = torch.zeros((x.shape[0] - self.delta.shape[0], *x.shape[1:]), device=x.device, dtype=x.dtype)
            self.delta = torch.cat([self.delta, pad])
        return self.delta[: x.shape[0]]

    def step(self, model, optimizer, x, y, *, check_loss=_no_check, generator=None) -> Stats:
        total = torch.zeros((), device=x.device)
        for _ in range(self.replays):
            delta = self._delta_for(x).detach().requires_grad_(True)
            optimizer.zero_grad(set_to_none=True)
            loss = cross_entropy(model((x + delta).clamp(0, 1)), y).mean()
            check_loss(loss)
            loss.backward()  # parameter gradients and the input gradient, in one pass
            optimizer.step()
            new = self.ball.project(delta.detach() + self.ball.step(delta.grad, self.eps), self.eps)
            self.delta[: x.shape[0]] = new
            total += loss.detach()
        return {"loss": total / self.replays}


def build_method(cfg) -> TrainingMethod:
    """The method of a :class:`~paperlib.training.TrainConfig`."""
    if cfg.method == "undefended":
        return Standard()
    if cfg.method == "penalty":
        return Regularized(GradientPenalty(norm=cfg.norm, method=cfg.penalty, lam=cfg.lam, h=cfg.h if cfg.h is not None else 0.01,
                                           scheme=cfg.scheme or "forward", scale=cfg.scale,
                                           bn_guard=cfg.bn_guard))
    if cfg.method == "pgd-at":
        return PGDAdversarialTraining(norm=cfg.norm, eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size,
                                      random_start=cfg.random_start, bn_guard=cfg.bn_guard)
    if cfg.method == "free-at":
        return FreeAdversarialTraining(norm=cfg.norm, eps=cfg.eps, m=cfg.m)
    raise ConfigError(f"method={cfg.method!r} is not allowed; choose one of {', '.join(map(repr, METHODS))}")
