"""The L-bound of Proposition 2.2: the Lipschitz constant ``L`` of the loss and the per-image bound it gives.

With the evaluation loss ``l`` (:func:`paperlib.losses.margin_loss`, threshold ``l0 = 0``) and ``||.||_*`` the
dual of the attack norm (l2 -> l2, linf -> l1), every image ``x`` with ``l(x) < l0`` satisfies, for any
adversarial perturbation ``v``, ``||v|| >= max(l0 - l(x), 0) / L`` where ``L = sup_x ||grad l(x)||_*``:

* :func:`lipschitz_constant` -- ``L``, estimated from dual gradient norms either by their empirical maximum (the
  authors' code, ``method='empirical-max'``) or by an extreme-value fit to batch maxima (what the paper
  describes, ``method='evt'``; :mod:`paperlib.bounds.evt`);
* :func:`ball_gradient_norms` -- further samples of that supremum: dual gradient norms at points uniform in a
  ball around each image (the images alone give one sample each);
* :func:`l_bound` -- the per-image bound.

Tensors in, tensors out. The modulus of continuity and the omega-bound are in :mod:`paperlib.bounds.omega`;
the bound stage that computes both for a model and writes them to the run store is
:mod:`paperlib.bounds.stage`. These are *heuristic* bounds: ``L`` is an estimate, not the supremum
(:mod:`paperlib.bounds.audit` measures how often the bound exceeds an adversarial the attacks found).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from paperlib.config import check_choice, check_int, check_nonnegative, check_positive, normalize_norm
from paperlib.losses import MARGIN_L0, get_loss
from paperlib.bounds.evt import GEVFit, estimate_supremum
from paperlib.bounds.sampling import perturb_in_box, sample_uniform_ball
from paperlib.bounds.statistics import LossFn, dual_norm, eval_mode, loss_and_gradient, model_device

__all__ = ["lipschitz_constant", "l_bound", "ball_gradient_norms"]


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
    norm = normalize_norm(norm)
    check_positive("eps", eps)
    n_samples = check_int("n_samples", n_samples, 1)
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
