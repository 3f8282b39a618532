"""The small Fashion-MNIST network of the ``smoke`` and ``fmnist`` profiles.

The paper trains a ResNeXt-34 on CIFAR-10 on a GPU; this project's default scale is Fashion-MNIST on a
2-core CPU, where the whole grid (17 models, 7-step adversarial training among them) must fit in about an
hour of training. The network is therefore small, plain ReLU (as the paper's networks) and BatchNorm-free,
so the finite-difference penalty and double backpropagation are comparable per example:

conv 3x3 1->16, ReLU, avgpool 2; conv 3x3 16->32, ReLU, avgpool 2; linear 1568->128, ReLU; linear 128->10.
Normalization (Fashion-MNIST mean 0.2860, std 0.3530) is the first layer, so inputs are in [0, 1].

Why average pooling, not max pooling: Fashion-MNIST images have large areas of exactly constant (zero)
background, where every value in a 2x2 max-pool window is equal. A max over ties is not differentiable: the
directional derivative along a perturbation differs from the autograd gradient's prediction. Measured on a
briefly trained max-pool version (32 test images, float64): the finite-difference quotient missed the exact
gradient norm by a median 6.5% even at h = 1e-6, against 1e-4% for this average-pool version. Such a network
would make finite differences, double backpropagation, gradient attacks and the gradient-based bounds all
disagree for a reason the paper is not about. The paper's ResNeXt also pools by averaging.

Measured on this project's 2-core CPU (torch 2.14.1, 2 threads): one epoch of standard training on the 60,000
training images (batch 128, 468 steps) took 13.0 s on a quiet machine; 6 epochs (seed 0, learning rate x0.2 at
epoch 4) reached 9.63% test error on the 10,000 test images. The ``fmnist`` profile trains 2 epochs so that the
paper's 17-model grid fits about two hours; its undefended model (``runs/fmnist/undefended``) has 12.61% test error.
The benchmark ``benchmarks/bench_training.py`` gives the other methods' step costs relative to this one.
"""

from __future__ import annotations

import torch
from torch import nn

from paperlib.models.normalize import Normalize

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


class FashionCNN(nn.Module):
    """Small ReLU CNN for 1x28x28 inputs in [0, 1]; returns logits ``[B, num_classes]``.

    Args:
        num_classes: number of classes (10).
        width: channels of the first convolution (the second has twice as many).
        hidden: units of the hidden linear layer.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            Normalize((FMNIST_MEAN,), (FMNIST_STD,)),
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
