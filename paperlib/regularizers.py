"""The input-gradient penalty of the paper (eq. 8, Proposition 3.2, Algorithm 1).

The regularized training objective is, per minibatch of ``B`` examples,

    loss = (1/B) sum_i l(x_i)  +  (lam/2) (1/B) sum_i R_i,          (eq. 8, ``scale='eq8'``)

where ``l`` is the per-example cross-entropy and ``R_i`` approximates the squared dual norm of the input
gradient ``g_i = grad_x l(x_i)``:

* ``norm='l2'`` (against attacks measured in l2):  ``R_i = ||g_i||_2^2``;
* ``norm='l1'`` (against attacks measured in linf): ``R_i = ||g_i||_1^2 / N``, ``N`` the input dimension.

**Which norm.** ``norm`` names the norm of the *penalty* (the paper's row labels "squared l1 norm",
"squared l2 norm"): it is the dual of the attack norm. ``norm='l1'`` defends against ``linf`` attacks. If you
think in attacks, pass ``attack_norm='linf'`` (or ``'l2'``) instead; :func:`dual_norm` maps one to the other.
Passing ``norm='linf'`` is an error (it would be ambiguous).

**Finite differences** (``method='fd'``, the paper's contribution; :func:`finite_difference_penalty`):

1. forward ``x`` -> ``l(x)``; ``g = grad_x sum_i l(x_i)`` with the graph kept (``retain_graph``), so the
   clean forward is *reused* by the final backward and never recomputed;
2. direction ``d_i``, detached from the graph: ``g_i/||g_i||_2`` (l2) or ``sign(g_i)/sqrt(N)`` (l1), and
   ``d_i = 0`` where ``g_i = 0`` (never NaN);
3. ``D_i = (l(x_i + h d_i) - l(x_i)) / h`` (``scheme='forward'``, Algorithm 1) or
   ``(l(x_i + h d_i) - l(x_i - h d_i)) / (2h)`` (``scheme='central'``, one more forward);
4. ``R_i = D_i^2``.  Parameter gradients flow through both ``l(x + h d)`` and ``l(x)``; only ``d`` is
   constant, so no second-order graph is ever built.

``D_i`` is a directional derivative along a unit-l2 direction: for l2 it estimates ``||g_i||_2``, for l1 it
estimates ``<g_i, sign g_i>/sqrt(N) = ||g_i||_1/sqrt(N)``. That is where the ``1/N`` of the l1 penalty comes
from: it is what the authors' code (cfinlay/tulip) computes, and the paper's lam values were tuned with it.

**Experimental, BatchNorm-free nets:** ``reuse_input_pass=True`` forms the clean term's parameter gradients
from the input-gradient pass (:func:`finite_difference_loss_reusing_input_pass`), so the clean graph is not
backpropagated twice; same gradients (tested to 1e-12 in float64).

**Double backpropagation** (``method='dbp'``, :func:`double_backprop_penalty`): the same ``R_i`` computed
exactly from ``g`` built with ``create_graph=True`` (Drucker & LeCun 1991). It is the exact reference the
FD estimate converges to as ``h -> 0`` (tested in float64).

**Scale** (``scale=``), one documented option:

* ``'eq8'`` (default): ``(lam/2) mean_i R_i`` -- eq. 8 and the authors' code (``dl.pow(2).mean()/2``), with
  the l1 penalty's ``1/N`` as above;
* ``'algorithm1'``: ``lam mean_i R_i`` -- Algorithm 1 of the appendix as printed (no 1/2);
* ``'eq8-literal'``: ``(lam/2) mean_i ||g_i||_*^2`` with no ``1/N`` for l1 (eq. 8 read literally; for l2 it
  equals ``'eq8'``). With l1 this multiplies the penalty by ``N`` relative to the authors' code.

**BatchNorm.** By default both forwards run in the model's current mode (train mode during training), as the
authors did: BatchNorm normalizes the perturbed batch with its own statistics and its running statistics are
updated by both forwards. ``bn_guard=True`` keeps the perturbed forward(s) from touching the running statistics
(momentum 0 for that pass, ``num_batches_tracked`` restored), so they evolve exactly as in a standard step.
Either way, in train mode BatchNorm couples the examples of a batch, so ``g_i`` is not a per-example gradient
and FD and DBP differ; in eval mode or without BatchNorm they agree.

Drop-in use in any training loop::

    penalty = GradientPenalty(norm='l2', lam=1.0, h=0.01)
    out = penalty(model, x, y); out.loss.backward()

``out`` also carries ``clean_loss`` (mean cross-entropy), ``penalty`` (``mean_i R_i`` before the lam scale)
and ``grad_norm`` (mean ``||g_i||_*`` in the penalty's norm, without the ``1/sqrt(N)``), all detached.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple

import torch
from torch import nn

from paperlib.config import (
    ConfigError,
    check_choice,
    check_labels,
    check_logits,
    check_nonnegative,
    check_positive,
    check_unit_images,
)
from paperlib.losses import cross_entropy
from paperlib.norms import ATTACK_NORMS, dual_norm_name, get_norm

__all__ = [
    "PENALTY_NORMS",
    "PENALTY_METHODS",
    "FD_SCHEMES",
    "SCALES",
    "PenaltyOutput",
    "PenaltyTerms",
    "GradientPenalty",
    "dual_norm",
    "penalty_norm",
    "fd_direction",
    "finite_difference_penalty",
    "double_backprop_penalty",
    "finite_difference_loss_reusing_input_pass",
    "penalty_coefficient",
    "frozen_batchnorm_stats",
]

#: Norms of the squared-norm penalty ('l1' is the dual of linf attacks).
PENALTY_NORMS = ("l2", "l1")
#: Ways of computing it: finite differences (Algorithm 1) or double backpropagation.
PENALTY_METHODS = ("fd", "dbp")
#: Finite-difference schemes.
FD_SCHEMES = ("forward", "central")
#: Scale conventions (see the module docstring).
SCALES = ("eq8", "algorithm1", "eq8-literal")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dual_norm(attack_norm: str) -> str:
    """The penalty norm that defends against attacks in ``attack_norm``: ``'l2' -> 'l2'``, ``'linf' -> 'l1'``."""
    if not isinstance(attack_norm, str) or attack_norm.lower() not in ATTACK_NORMS:
        raise ConfigError(f"attack_norm={attack_norm!r} is not allowed; choose 'l2' or 'linf' (case-insensitive)")
    return dual_norm_name(attack_norm)


def penalty_norm(norm: str) -> str:
    """Validate the penalty's own norm (``'l2'`` or ``'l1'``, case-insensitive)."""
    if isinstance(norm, str) and norm.lower() in PENALTY_NORMS:
        return norm.lower()
    if isinstance(norm, str) and norm.lower() == "linf":
        raise ConfigError("norm='linf' is not a penalty norm: the penalty uses the dual norm of the attack; "
                          "to defend against linf attacks use norm='l1' (or attack_norm='linf')")
    raise ConfigError(f"norm={norm!r} is not allowed; choose 'l2' or 'l1' (the penalty's norm, dual to the attack's)")


class PenaltyTerms(NamedTuple):
    """Per-example parts of the penalty (shape ``[B]`` each).

    Attributes:
        clean_losses: ``l(x_i)``, attached to the graph.
        penalties: ``R_i`` (``D_i^2`` for FD, ``||g_i||_2^2`` or ``||g_i||_1^2/N`` for DBP), attached.
        grad_norms: ``||g_i||_*`` in the penalty's norm (no ``1/sqrt(N)``), detached.
        direction: the detached FD direction ``d`` (same shape as ``x``), or None for DBP.
    """

    clean_losses: torch.Tensor
    penalties: torch.Tensor
    grad_norms: torch.Tensor
    direction: torch.Tensor | None


class PenaltyOutput(NamedTuple):
    """What :class:`GradientPenalty` returns.

    Attributes:
        loss: the regularized loss ``mean l + coef * mean R`` (scalar, attached): call ``.backward()`` on it.
        clean_loss: mean cross-entropy of the batch (scalar, detached).
        penalty: ``mean_i R_i`` before the lam scale (scalar, detached).
        grad_norm: mean input-gradient norm ``mean_i ||g_i||_*`` in the penalty's norm (scalar, detached).
    """

    loss: torch.Tensor
    clean_loss: torch.Tensor
    penalty: torch.Tensor
    grad_norm: torch.Tensor


# --------------------------------------------------------------------------------------------------
# BatchNorm guard
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, BatchNorm layers in train mode still normalize with batch statistics but do not
    update their running statistics (momentum 0; ``num_batches_tracked`` restored on exit)."""
    if not enabled:
        yield
        return
    saved = []
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            nbt = mod.num_batches_tracked.clone() if mod.num_batches_tracked is not None else None
            saved.append((mod, mod.momentum, nbt))
            mod.momentum = 0.0
    try:
        yield
    finally:
        for mod, momentum, nbt in saved:
            mod.momentum = momentum
            if nbt is not None:
                mod.num_batches_tracked.copy_(nbt)


# --------------------------------------------------------------------------------------------------
# Functional forms
# --------------------------------------------------------------------------------------------------


def _prepare_input(x: torch.Tensor) -> torch.Tensor:
    # A fresh leaf that requires grad; the caller's tensor is never modified and never gets a .grad.
    # Images must be finite with pixels in [0, 1] (not 0..255, not normalized): a ConfigError otherwise.
    check_unit_images(x)
    return x.detach().requires_grad_(True)


def _clean_losses(model: nn.Module, xg: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    # The clean forward, with the model's logits checked to be [B, K] and the labels to lie in [0, K).
    logits = model(xg)
    check_labels(y, check_logits(logits, xg.shape[0]), xg.shape[0])
    return loss_fn(logits, y)


def fd_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The detached finite-difference direction of Proposition 3.2 for input gradients ``g`` ``[B, ...]``.

    ``'l2'``: ``g_i / ||g_i||_2``; ``'l1'``: ``sign(g_i) / sqrt(N)``. Rows with ``g_i = 0`` give ``d_i = 0``.
    Every row of a nonzero gradient has unit l2 norm (for l1, exactly when no entry is 0).
    """
    # The attack norm's steepest-ascent direction (g/||g||_2 for l2, sign g for linf), scaled to unit l2 length:
    # 1/sqrt(N) for linf, whose directions are the box's corners.
    attack = get_norm(penalty_norm(norm)).dual
    g = g.detach()
    return attack.direction(g) / math.sqrt(attack.l2_radius_squared(g[0].numel()))


def _dual_norms(g: torch.Tensor, norm: str) -> torch.Tensor:
    return get_norm(norm).norm(g)


def finite_difference_penalty(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "l2",
                              h: float = 0.01, scheme: str = "forward", bn_guard: bool = False,
                              loss_fn: LossFn = cross_entropy) -> PenaltyTerms:
    """Finite-difference estimate of the squared dual gradient norm, per example (Algorithm 1).

    Args:
        model: maps ``x`` to logits; used in whatever mode it is in.
        x: inputs ``[B, ...]`` in [0, 1] (not modified).
        y: labels ``[B]``.
        norm: the penalty's norm, ``'l2'`` or ``'l1'`` (dual of the attack norm).
        h: finite-difference step in input units (pixels in [0, 1]); > 0.
        scheme: ``'forward'`` (Algorithm 1: two forwards, the clean one reused) or ``'central'`` (three).
        bn_guard: keep the perturbed forward(s) from updating BatchNorm running statistics.
        loss_fn: per-example loss ``(logits, y) -> [B]`` (cross-entropy).

    Returns:
        :class:`PenaltyTerms` with ``penalties = D_i^2`` where ``D_i`` is the difference quotient along the
        detached direction ``d_i`` (:func:`fd_direction`). Backpropagating through ``penalties`` costs one
        ordinary backward through the clean and the perturbed graphs; no second-order graph exists.
    """
    norm = penalty_norm(norm)
    check_positive("h", h)
    check_choice("scheme", scheme, FD_SCHEMES)
    xg = _prepare_input(x)
    clean = _clean_losses(model, xg, y, loss_fn)
    # Input-only backward: parameter gradients are not computed here, and the graph is kept so the final
    # backward reuses the clean forward instead of recomputing it.
    (g,) = torch.autograd.grad(clean.sum(), xg, retain_graph=True)
    d = fd_direction(g, norm)
    x0 = xg.detach()
    with frozen_batchnorm_stats(model, bn_guard):
        forward = loss_fn(model(x0 + h * d), y)
        if scheme == "central":
            backward = loss_fn(model(x0 - h * d), y)
            D = (forward - backward) / (2 * h)
        else:
            D = (forward - clean) / h
    return PenaltyTerms(clean, D.pow(2), _dual_norms(g, norm), d)


def double_backprop_penalty(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "l2",
                            loss_fn: LossFn = cross_entropy) -> PenaltyTerms:
    """The exact squared dual gradient norm by double backpropagation, per example.

    ``penalties = ||g_i||_2^2`` (l2) or ``||g_i||_1^2 / N`` (l1, the same normalization the FD estimate has),
    with ``g = grad_x sum_i l(x_i)`` built with ``create_graph=True``. Arguments as
    :func:`finite_difference_penalty`.
    """
    norm = penalty_norm(norm)
    xg = _prepare_input(x)
    clean = _clean_losses(model, xg, y, loss_fn)
    (g,) = torch.autograd.grad(clean.sum(), xg, create_graph=True)
    R = get_norm(norm).squared_norm(g) / _l1_normalization(norm, g[0].numel())
    return PenaltyTerms(clean, R, _dual_norms(g.detach(), norm), None)


def penalty_coefficient(lam: float, scale: str, norm: str, input_dim: int) -> float:
    """The factor multiplying ``mean_i R_i`` in the loss, for a scale convention (module docstring)."""
    check_choice("scale", scale, SCALES)
    if scale == "algorithm1":
        return float(lam)
    coef = lam / 2
    if scale == "eq8-literal":
        coef *= _l1_normalization(norm, input_dim)
    return float(coef)


def _l1_normalization(norm: str, input_dim: int) -> int:
    """``N`` for the l1 penalty, 1 for l2: the squared l2 length of the attack norm's unit steepest-ascent
    direction (``||sign g||_2^2 = N``), which the FD estimate divides out (module docstring)."""
    return get_norm(penalty_norm(norm)).dual.l2_radius_squared(input_dim)


def _reuse_layers(model: nn.Module) -> list[nn.Module]:
    """The Conv2d/Linear layers of a model the input-pass reuse supports, or a ConfigError saying why not."""
    layers = []
    for name, mod in model.named_modules():
        own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training:
            raise ConfigError(f"reuse_input_pass needs a BatchNorm-free model (or BatchNorm in eval mode): "
                              f"{name or 'model'} is a {type(mod).__name__} in train mode, which couples the "
                              "examples of a batch")
        if not own:
            continue
        if isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.padding_mode == "zeros"
                                          and isinstance(mod.padding, tuple)):
            layers.append(mod)
        else:
            raise ConfigError(f"reuse_input_pass supports parameters in Conv2d (zero padding) and Linear layers "
                              f"only; {name or 'model'} is a {type(mod).__name__} with parameters")
    return layers


def _weight_gradients(mod: nn.Module, inp: torch.Tensor, delta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Parameter gradients of one Conv2d/Linear call from its input and its (scaled) output gradient."""
    out = []
    if isinstance(mod, nn.Linear):
        d2 = delta.reshape(-1, delta.shape[-1])
        if mod.weight.requires_grad:
            out.append((mod.weight, d2.t() @ inp.reshape(-1, inp.shape[-1])))
        if mod.bias is not None and mod.bias.requires_grad:
            out.append((mod.bias, d2.sum(0)))
    else:
        if mod.weight.requires_grad:
            gw = torch.nn.grad.conv2d_weight(inp, mod.weight.shape, delta, stride=mod.stride, padding=mod.padding,
                                             dilation=mod.dilation, groups=mod.groups)
            out.append((mod.weight, gw))
        if mod.bias is not None and mod.bias.requires_grad:
            out.append((mod.bias, delta.sum((0, 2, 3))))
    return out


def finite_difference_loss_reusing_input_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                                              norm: str = "l2", h: float = 0.01, coef: float = 0.05,
                                              loss_fn: LossFn = cross_entropy) -> PenaltyOutput:
    """Experimental: the FD-regularized loss with the input-gradient pass's work reused for the parameter
    gradients of the clean term (BatchNorm-free nets of Conv2d/Linear layers and parameter-free modules).

    The loss is ``L = mean_i l(x_i) + coef * mean_i D_i^2`` (the FD loss with ``coef`` from
    :func:`penalty_coefficient`). Its parameter gradient is ``sum_i a_i grad_w l(x_i) + b_i grad_w l(z_i)`` with
    ``a_i = (1 - 2 coef D_i / h)/B`` and ``b_i = 2 coef D_i/(h B)``. Without BatchNorm in train mode the
    examples are independent, so the output gradient of every layer for weights ``a_i`` is ``a_i`` times the
    one the input-gradient pass already computed (weights 1). We keep those (and each layer's input) and form
    the clean term's weight gradients directly (``conv2d_weight`` / a matmul), so the clean graph is never
    backpropagated a second time: per step one clean forward, one input-gradient backward, one weight-gradient
    pass, one perturbed forward and one full backward, instead of two full backwards.

    Returns a :class:`PenaltyOutput` whose ``loss`` has the FD loss's value and exactly its parameter gradient
    (a surrogate: ``b``-weighted perturbed losses plus ``<w, G_w>`` with the precomputed clean gradients ``G``).
    Same gradients as :func:`finite_difference_penalty` up to rounding (tested in float64).
    """
    norm = penalty_norm(norm)
    check_positive("h", h)
    layers = _reuse_layers(model)
    records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(mod, inputs, output):
        records.append((mod, inputs[0].detach(), output))

    xg = _prepare_input(x)
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        clean = _clean_losses(model, xg, y, loss_fn)
    finally:
        for hd in handles:
            hd.remove()
    outs = [o for _, _, o in records]
    grads = torch.autograd.grad(clean.sum(), [xg] + outs)  # the clean graph is freed here
    g, deltas = grads[0], grads[1:]
    d = fd_direction(g, norm)
    perturbed = loss_fn(model(xg.detach() + h * d), y)
    clean = clean.detach()
    B = clean.shape[0]
    D = (perturbed.detach() - clean) / h
    a = (1 - 2 * coef * D / h) / B
    b = (2 * coef * D / h) / B
    accum: dict[nn.Parameter, torch.Tensor] = {}
    for (mod, inp, _), delta in zip(records, deltas):
        scaled = delta * a.view(-1, *[1] * (delta.ndim - 1)).to(delta.dtype)
        for p, gp in _weight_gradients(mod, inp, scaled):
            accum[p] = accum[p] + gp if p in accum else gp
    surrogate = (b.detach() * perturbed).sum()
    for p, gp in accum.items():
        surrogate = surrogate + (p * gp.detach()).sum()
    Dp = (perturbed - clean) / h
    value = clean.mean() + coef * Dp.detach().pow(2).mean()
    loss = surrogate - surrogate.detach() + value
    return PenaltyOutput(loss, clean.mean(), D.pow(2).mean(), _dual_norms(g, norm).mean())


# --------------------------------------------------------------------------------------------------
# The drop-in
# --------------------------------------------------------------------------------------------------


class GradientPenalty:
    """Squared-norm input-gradient regularization as a drop-in loss (paper eq. 8).

    >>> penalty = GradientPenalty(norm='l2', lam=1.0, h=0.01)
    >>> out = penalty(model, x, y); out.loss.backward()

    Args:
        norm: the penalty's norm, ``'l2'`` (against l2 attacks) or ``'l1'`` (against linf attacks).
            Give either ``norm`` or ``attack_norm``; default ``'l2'``.
        attack_norm: alternatively, the attack norm to defend against (``'l2'`` or ``'linf'``).
        method: ``'fd'`` (finite differences, Algorithm 1) or ``'dbp'`` (double backpropagation).
        lam: regularization strength lambda >= 0 (the paper: 0.1 or 1).
        h: finite-difference step in [0, 1] pixel units (paper: 0.01; 0.1 for l1 with lam 1). FD only.
        scheme: ``'forward'`` (Algorithm 1) or ``'central'`` differences. FD only.
        scale: ``'eq8'`` (lam/2, authors' code; default), ``'algorithm1'`` (lam) or ``'eq8-literal'``.
        bn_guard: keep the perturbed forward from updating BatchNorm running statistics (FD only; the
            default False is the authors' behaviour).
        reuse_input_pass: experimental, BatchNorm-free nets only: form the clean term's parameter gradients
            from the input-gradient pass instead of a second backward through the clean graph
            (:func:`finite_difference_loss_reusing_input_pass`; same gradients, fewer passes).
        loss_fn: per-example training loss ``(logits, y) -> [B]``; cross-entropy.
    """

    def __init__(self, *, norm: str | None = None, attack_norm: str | None = None, method: str = "fd",
                 lam: float = 0.1, h: float = 0.01, scheme: str = "forward", scale: str = "eq8",
                 bn_guard: bool = False, reuse_input_pass: bool = False,
                 loss_fn: LossFn = cross_entropy) -> None:
        if attack_norm is not None:
            dual = dual_norm(attack_norm)
            if norm is not None and penalty_norm(norm) != dual:
                raise ConfigError(f"norm={norm!r} contradicts attack_norm={attack_norm!r} (whose dual is {dual!r}); "
                                  "give only one of them")
            norm = dual
        self.norm = penalty_norm(norm if norm is not None else "l2")
        self.method = check_choice("method", method, PENALTY_METHODS)
        self.lam = float(check_nonnegative("lam", lam))
        self.h = float(check_positive("h", h))
        self.scheme = check_choice("scheme", scheme, FD_SCHEMES)
        self.scale = check_choice("scale", scale, SCALES)
        self.bn_guard = bool(bn_guard)
        self.reuse_input_pass = bool(reuse_input_pass)
        if self.reuse_input_pass and (self.method != "fd" or self.scheme != "forward"):
            raise ConfigError("reuse_input_pass applies to forward finite differences only (method='fd', "
                              f"scheme='forward'); got method={self.method!r}, scheme={self.scheme!r}")
        self.loss_fn = loss_fn

    def __repr__(self) -> str:
        extra = f", h={self.h}, scheme={self.scheme!r}, bn_guard={self.bn_guard}" if self.method == "fd" else ""
        return f"GradientPenalty(norm={self.norm!r}, method={self.method!r}, lam={self.lam}, scale={self.scale!r}{extra})"

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> PenaltyTerms:
        """Per-example clean losses, penalties and gradient norms (see :class:`PenaltyTerms`)."""
        if self.method == "fd":
            return finite_difference_penalty(model, x, y, norm=self.norm, h=self.h, scheme=self.scheme,
                                             bn_guard=self.bn_guard, loss_fn=self.loss_fn)
        return double_backprop_penalty(model, x, y, norm=self.norm, loss_fn=self.loss_fn)

    def coefficient(self, x: torch.Tensor) -> float:
        """The factor multiplying ``mean_i R_i`` for inputs shaped like ``x``."""
        return penalty_coefficient(self.lam, self.scale, self.norm, x[0].numel())

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> PenaltyOutput:
        """Regularized loss of a batch ``x`` ``[B, ...]`` (pixels in [0, 1]) with labels ``y`` ``[B]``.

        Images that are not finite or not in [0, 1], logits that are not ``[B, K]`` and labels outside
        ``[0, K)`` are a :class:`~paperlib.config.ConfigError`."""
        if self.lam == 0:
            # lam = 0 is standard training: skip the penalty's passes entirely (no wasted work).
            clean = _clean_losses(model, check_unit_images(x), y, self.loss_fn)
            loss = clean.mean()
            nan = torch.full((), float("nan"), device=loss.device)
            return PenaltyOutput(loss, loss.detach(), nan, nan)
        if self.reuse_input_pass:
            return finite_difference_loss_reusing_input_pass(model, x, y, norm=self.norm, h=self.h,
                                                             coef=self.coefficient(x), loss_fn=self.loss_fn)
        t = self.terms(model, x, y)
        clean_loss = t.clean_losses.mean()
        penalty = t.penalties.mean()
        loss = clean_loss + self.coefficient(x) * penalty
        return PenaltyOutput(loss, clean_loss.detach(), penalty.detach(), t.grad_norms.mean())
