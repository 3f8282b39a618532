"""Per-example losses: the training loss (cross-entropy) and the paper's evaluation loss.

The evaluation loss of section 2.2 is a modified Carlini-Wagner loss on softmax probabilities,

    l(x) = max_{i != c} p_i(x) - p_c(x),          p = softmax(model(x)), c = the true label,

with the threshold ``l0 = 0`` (:data:`MARGIN_L0`): the image is classified correctly iff ``l(x) < 0``. It is
what the L-bound and the omega-bound of Proposition 2.2 are computed from (:mod:`paperlib.bounds`).

Top-k variant (ImageNet, Tables 1 and 2 report top-5 error). We define

    l_k(x) = (k-th largest of {p_i : i != c}) - p_c(x),

so that ``l_k(x) < 0`` iff fewer than ``k`` other classes have a probability at least ``p_c``, i.e. iff the
true class is in the top ``k`` (ties count against the image). ``l_1`` is the loss above. The authors'
ImageNet code (cfinlay/tulip, ``imagenet/test_statistics.py``) uses instead "the largest probability outside
the top 5", i.e. the 6th largest of *all* probabilities, minus ``p_c``. The two agree exactly whenever the
true class is in the top 5 (then the 6th largest overall is the 5th largest of the others), which is every
image the bounds certify; they differ only on top-5-misclassified images, where both are ``>= 0``. Ours
has the advantage that ``top_k=1`` gives back the top-1 loss, and it is continuous in ``p``.

:func:`logit_margin_loss` is the same construction on logits instead of probabilities (the original
Carlini-Wagner margin). For a linear model it is exactly linear in ``x``, which makes it the reference case
in the tests of the omega-bound.

All functions take ``logits`` of shape ``[B, K]`` and integer labels ``y`` of shape ``[B]`` and return a
per-example tensor of shape ``[B]`` (no reduction).

This is the package's one margin: both margins are ``_kth_other_minus_true`` on probabilities or on logits.
The attacks use it through their criterion (:meth:`paperlib.attacks.base.Misclassification.margin`, minus
these losses, with the criterion's ``top_k``); the summed logit margin ``paperlib.attacks.pgd.margin_loss``
equals ``logit_margin_loss(z, y).sum()`` to the last bit (tested).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from paperlib.config import ConfigError, check_choice

__all__ = [
    "MARGIN_L0",
    "LOSSES",
    "cross_entropy",
    "margin_loss",
    "logit_margin_loss",
    "get_loss",
    "is_correct",
]

#: The loss threshold of Proposition 2.2 for the margin losses: correct iff ``l(x) < MARGIN_L0``.
MARGIN_L0: float = 0.0


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy ``-log p_y`` (the training loss). Shape ``[B]``."""
    return F.cross_entropy(logits, y, reduction="none")


def _kth_other_minus_true(scores: torch.Tensor, y: torch.Tensor, top_k: int) -> torch.Tensor:
    """``(k-th largest of scores_i over i != y) - scores_y`` per row."""
    if scores.ndim != 2:
        raise ConfigError(f"logits must have shape [B, K]; got shape {tuple(scores.shape)}")
    num_classes = scores.shape[1]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes - 1:
        raise ConfigError(f"top_k={top_k!r} must be an integer in [1, {num_classes - 1}] for {num_classes} classes")
    y = y.to(device=scores.device, dtype=torch.long).view(-1, 1)
    true = scores.gather(1, y).squeeze(1)
    # Exclude the true class; -inf never wins a top-k among the others since K - 1 >= k.
    others = scores.scatter(1, y, float("-inf"))
    # k = 1: amax, whose value is topk's but whose gradient at a tie is split evenly among the tied classes,
    # as the attacks' margin always was (so their top-1 margin is unchanged to the last bit, gradients included)
    kth = others.amax(dim=1) if top_k == 1 else others.topk(top_k, dim=1).values[:, -1]
    return kth - true


def margin_loss(logits: torch.Tensor, y: torch.Tensor, top_k: int = 1) -> torch.Tensor:
    """The paper's evaluation loss on softmax probabilities, per example (shape ``[B]``, values in [-1, 1]).

    ``top_k=1``: ``max_{i != c} p_i - p_c``. ``top_k=k``: the k-th largest ``p_i`` over ``i != c`` minus
    ``p_c`` (see the module docstring for how this relates to the authors' "6th largest overall" top-5 loss).
    The image counts as correct iff the value is ``< MARGIN_L0 = 0``.
    """
    return _kth_other_minus_true(logits.softmax(dim=1), y, top_k)


def logit_margin_loss(logits: torch.Tensor, y: torch.Tensor, top_k: int = 1) -> torch.Tensor:
    """Carlini-Wagner margin on logits: k-th largest ``z_i`` over ``i != c`` minus ``z_c`` (shape ``[B]``).

    Same sign as :func:`margin_loss` (softmax is monotone), so the same threshold ``l0 = 0``.
    """
    return _kth_other_minus_true(logits, y, top_k)


#: Evaluation losses with threshold ``l0 = 0``, by the name used in configs.
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "margin": margin_loss,
    "logit-margin": logit_margin_loss,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """The evaluation loss named ``name`` ('margin' -- the paper's --, or 'logit-margin')."""
    check_choice("loss", name, LOSSES)
    return LOSSES[name]


def is_correct(logits: torch.Tensor, y: torch.Tensor, top_k: int = 1) -> torch.Tensor:
    """Top-k correctness as the bounds define it: ``margin_loss < 0`` (ties are errors). Bool ``[B]``."""
    return margin_loss(logits, y, top_k) < MARGIN_L0
