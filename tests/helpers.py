"""Test helpers shared by several test files, defined once: small float64 models and their inputs.

* :class:`TinyCNN`, :func:`images`, :func:`contract_batch` -- the attack contract's model and batch
  (tests/test_attacks_contract.py, tests/test_attacks_reference.py);
* :func:`linear_problem` -- a linear classifier with the closed-form minimal l2 and linf adversarial distances
  (tests/test_attacks_exact.py, tests/test_attacks_reference.py).

Plain functions and classes, not pytest fixtures (tests call them with arguments); shared settings and fixtures
are in tests/conftest.py.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyCNN", "images", "contract_batch", "linear_problem"]


class TinyCNN(nn.Module):
    """A float64 CNN for 1x8x8 inputs that records the mode it was called in."""

    def __init__(self, seed: int = 0, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, classes))
        self.net.double()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.net(x) * 5.0


def images(n: int = 5, seed: int = 1) -> torch.Tensor:
    """``n`` float64 images ``[n, 1, 8, 8]`` uniform in [0, 1], seeded (the inputs of :class:`TinyCNN`)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)


def contract_batch() -> tuple[TinyCNN, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(model, x, a copy of x, y)`` for the contract checks: a TinyCNN left in train mode with its mode record
    cleared, five images, labels the model predicts except image 4's (misclassified from the start)."""
    model = TinyCNN()
    x = images()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[4] = (y[4] + 1) % 4
    x_before = x.clone()
    model.train()
    model.modes.clear()
    return model, x, x_before, y


def linear_problem(num_classes: int, n: int = 8, side: int = 8, seed: int = 0):
    """A float64 linear classifier, images near 0.5 and the exact minimal l2/linf distances."""
    g = torch.Generator().manual_seed(seed)
    d = side * side
    W = torch.randn(num_classes, d, generator=g, dtype=torch.float64) * (8.0 / d ** 0.5) * 0.5
    b = 0.1 * torch.randn(num_classes, generator=g, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, num_classes)).double()
    with torch.no_grad():
        model[1].weight.copy_(W)
        model[1].bias.copy_(b)
    x = 0.45 + 0.1 * torch.rand(n, 1, side, side, generator=g, dtype=torch.float64)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    gap = z.gather(1, y[:, None]) - z  # z_c - z_j >= 0
    dw = W[y][:, None, :] - W[None, :, :]  # [n, K, D]
    self_mask = torch.arange(num_classes)[None] == y[:, None]
    r2 = (gap / dw.norm(dim=2)).masked_fill(self_mask, float("inf"))
    rinf = (gap / dw.abs().sum(2)).masked_fill(self_mask, float("inf"))
    j2, jinf = r2.argmin(1), rinf.argmin(1)
    exact_l2, exact_linf = r2.min(1).values, rinf.min(1).values
    # the closest points must lie inside [0, 1] for the closed form to be the answer
    rows = torch.arange(n)
    u2 = dw[rows, j2] / dw[rows, j2].norm(dim=1, keepdim=True)
    p2 = x.flatten(1) - exact_l2[:, None] * u2
    pinf = x.flatten(1) - exact_linf[:, None] * dw[rows, jinf].sign()
    assert bool((p2 >= 0).all() and (p2 <= 1).all() and (pinf >= 0).all() and (pinf <= 1).all())
    return model, x, y, exact_l2, exact_linf
