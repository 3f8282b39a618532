"""Per-image statistics of the evaluation loss in one batched pass: loss, correctness, gradient norms.

For each image ``x`` with label ``c`` one forward and one backward pass give

* ``loss``: the evaluation loss ``l(x)`` (:func:`paperlib.losses.margin_loss` by default; ``l0 = 0``),
* ``correct``: ``l(x) < l0``,
* ``grad_norm_l2`` and ``grad_norm_l1``: ``||grad_x l(x)||_2`` and ``||grad_x l(x)||_1``.

The dual norm of the attack norm is what Proposition 2.2 uses: attacks in l2 -> ``||.||_2``; attacks in
linf -> ``||.||_1`` (:func:`dual_norm_name`). Both are recorded because one gradient gives both.

The model is put in eval mode for the pass and restored afterwards; the inputs are not modified. Every
image is processed independently (eval mode, no cross-example coupling), so batching does not change the
result beyond floating-point reassociation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm  # text bars: no ipywidgets needed in notebooks

from paperlib.models import eval_mode
from paperlib.config import ConfigError, check_labels, check_logits, normalize_norm
from paperlib.losses import MARGIN_L0, margin_loss
from paperlib.norms import dual_norm_name as _dual_norm_name

__all__ = [
    "ImageStatistics",
    "dual_norm_name",
    "dual_norm",
    "loss_and_gradient",
    "image_statistics",
    "eval_mode",
    "model_device",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dual_norm_name(norm: str) -> str:
    """'l2' -> 'l2', 'linf' -> 'l1': the dual norm used for gradients against attacks in ``norm``."""
    return _dual_norm_name(normalize_norm(norm))


def dual_norm(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example dual norm of ``g`` (shape ``[B, ...]`` -> ``[B]``) for attacks measured in ``norm``."""
    flat = g.reshape(g.shape[0], -1)
    return flat.norm(p=2, dim=1) if dual_norm_name(norm) == "l2" else flat.abs().sum(dim=1)




def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _model_dtype(model: nn.Module, default: torch.dtype) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def loss_and_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: LossFn = margin_loss,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example loss ``l(x)`` (shape ``[B]``) and its input gradient (shape of ``x``), detached.

    One forward and one backward pass; the parameters receive no gradient. ``x`` is not modified.
    Call it with the model already in the mode you want (see :func:`eval_mode`).
    """
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model(xg), y)
        (grad,) = torch.autograd.grad(loss.sum(), xg)
    return loss.detach(), grad.detach()


@dataclass
class ImageStatistics:
    """Per-image statistics (all tensors of shape ``[n]`` on the CPU).

    Attributes:
        loss: evaluation loss ``l(x)``.
        correct: ``l(x) < l0``.
        grad_norm_l2: ``||grad l(x)||_2``.
        grad_norm_l1: ``||grad l(x)||_1``.
        prediction: the argmax class of the logits.
    """

    loss: torch.Tensor
    correct: torch.Tensor
    grad_norm_l2: torch.Tensor
    grad_norm_l1: torch.Tensor
    prediction: torch.Tensor

    def grad_norm(self, norm: str) -> torch.Tensor:
        """The dual gradient norm for attacks measured in ``norm`` ('l2' -> l2, 'linf' -> l1)."""
        return self.grad_norm_l2 if dual_norm_name(norm) == "l2" else self.grad_norm_l1

    def __len__(self) -> int:
        return int(self.loss.numel())


def image_statistics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 256,
    loss_fn: LossFn = margin_loss,
    l0: float = MARGIN_L0,
    progress: bool = False,
) -> ImageStatistics:
    """Loss, correctness and gradient norms of every image, in batches of ``batch_size``.

    Args:
        model: maps ``[B, C, H, W]`` inputs in [0, 1] to logits ``[B, K]``.
        x: images ``[n, C, H, W]`` in [0, 1] (any device; moved to the model's device batch by batch).
        y: labels ``[n]`` in ``[0, K)`` (a :class:`~paperlib.config.ConfigError` otherwise, as for logits that
            are not ``[B, K]``).
        batch_size: images per forward/backward pass.
        loss_fn: per-example evaluation loss with threshold ``l0``.
        l0: the loss value at which classification becomes incorrect.
        progress: show a tqdm bar.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"x has {x.shape[0]} images but y has {y.shape[0]} labels")
    device = model_device(model)
    dtype = _model_dtype(model, x.dtype)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("loss", "l2", "l1", "pred")}
    with eval_mode(model):
        starts = range(0, x.shape[0], batch_size)
        for s in tqdm(starts, desc="gradient statistics", disable=not progress, leave=False):
            xb = x[s : s + batch_size].to(device=device, dtype=dtype)
            yb = y[s : s + batch_size].to(device)
            xg = xb.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xg)
                if s == 0:  # logits [B, K] and every label in [0, K), on the first batch's logits
                    check_labels(y, check_logits(logits, xb.shape[0]))
                loss = loss_fn(logits, yb)
                (grad,) = torch.autograd.grad(loss.sum(), xg)
            flat = grad.reshape(grad.shape[0], -1)
            out["loss"].append(loss.detach().cpu())
            out["l2"].append(flat.norm(p=2, dim=1).cpu())
            out["l1"].append(flat.abs().sum(dim=1).cpu())
            out["pred"].append(logits.detach().argmax(dim=1).cpu())
    loss = torch.cat(out["loss"]) if out["loss"] else torch.zeros(0)
    return ImageStatistics(
        loss=loss,
        correct=loss < l0,
        grad_norm_l2=torch.cat(out["l2"]) if out["l2"] else torch.zeros(0),
        grad_norm_l1=torch.cat(out["l1"]) if out["l1"] else torch.zeros(0),
        prediction=torch.cat(out["pred"]) if out["pred"] else torch.zeros(0, dtype=torch.long),
    )
