"""The paper's CIFAR-10 network: ResNeXt-34 (2x32), as in the authors' code.

Structure (about 3.89 M parameters; ``tests/test_models.py`` checks the count and the layers):

* a *conv unit* is conv (no bias) -> BatchNorm(affine=False) -> learnable per-channel bias -> ReLU;
* stem: 3x3 conv unit 3 -> 32;
* 5 branch blocks at width 32; 1x1 conv unit 32 -> 64 then AvgPool 2;
  5 blocks at 64; 1x1 conv unit 64 -> 128 then AvgPool 2; 5 blocks at 128;
* global average pool; linear 128 -> 10 (no bias) -> BatchNorm1d(affine=False) -> bias -> ReLU, so the
  logits are non-negative (the authors' choice; it is kept because the bounds depend on the logits' shape);
* a branch block of width C: 3x3 conv C -> 2C, BN, bias, ReLU; grouped 3x3 conv 2C -> 2C with 2 groups, BN,
  bias; the 2C channels are split into two branches of C channels which are averaged; the input is added; ReLU.

Inputs are in [0, 1] with no normalization (the authors' CIFAR-10 choice).
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelBias(nn.Module):
    """A learnable per-channel bias added after an affine-free BatchNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x + self.bias.view(shape)


def conv_unit(cin: int, cout: int, kernel: int, groups: int = 1, relu: bool = True) -> nn.Sequential:
    """conv (no bias) -> BatchNorm2d(affine=False) -> per-channel bias [-> ReLU]."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, affine=False),
        ChannelBias(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


class BranchBlock(nn.Module):
    """Residual block with two branches of width C, averaged (see the module docstring)."""

    def __init__(self, width: int, branches: int = 2) -> None:
        super().__init__()
        self.width, self.branches = width, branches
        self.conv1 = conv_unit(width, branches * width, 3)
        self.conv2 = conv_unit(branches * width, branches * width, 3, groups=branches, relu=False)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        n, _, h, w = out.shape
        out = out.view(n, self.branches, self.width, h, w).mean(dim=1)
        return self.relu(out + x)


class ResNeXt34(nn.Module):
    """ResNeXt-34 (2x32) for 32x32 inputs in [0, 1]; returns non-negative logits ``[B, num_classes]``.

    Args:
        num_classes: number of classes (10 for CIFAR-10).
        in_channels: input channels (3).
        width: width of the first stage (32); the stages are width, 2*width, 4*width.
        blocks: branch blocks per stage (5).
        branches: branches per block (2).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32, blocks: int = 5,
                 branches: int = 2) -> None:
        super().__init__()
        stages: list[nn.Module] = [conv_unit(in_channels, width, 3)]
        c = width
        for stage in range(3):
            stages += [BranchBlock(c, branches) for _ in range(blocks)]
            if stage < 2:
                stages += [conv_unit(c, 2 * c, 1), nn.AvgPool2d(2)]
                c *= 2
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes, bias=False)
        self.bn_out = nn.BatchNorm1d(num_classes, affine=False)
        self.bias_out = ChannelBias(num_classes)
        self.relu_out = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pool(self.features(x)).flatten(1)
        return self.relu_out(self.bias_out(self.bn_out(self.fc(z))))
