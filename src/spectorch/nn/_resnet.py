"""ResNets for CIFAR (He et al. 2016, §4.2): 6n+2 layers, 16/32/64 channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["cifar_resnet"]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, batchnorm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(cout) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not batchnorm)
        self.bn2 = nn.BatchNorm2d(cout) if batchnorm else nn.Identity()
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Option A shortcut of He et al.: subsample and zero-pad channels, no parameters.
        short = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images; see :func:`cifar_resnet`."""

    def __init__(self, n: int, num_classes: int, batchnorm: bool, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=not batchnorm)
        self.bn = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(_Block(cin, cout, stride, batchnorm))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet(
    depth: int = 20, *, num_classes: int = 10, batchnorm: bool = True, width: int = 16
) -> CifarResNet:
    """The CIFAR ResNet of He et al. 2016: ``depth = 6n + 2`` (20, 32, 44, 56, 110).

    ResNet-20 has 0.27M parameters, ResNet-32 0.46M. Without BatchNorm the
    convolutions get biases (the comparison of Ghorbani et al. 2019, §4).

    Raises:
        ValueError: if ``depth`` is not of the form ``6n + 2``.
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, ...), got {depth!r}")
    return CifarResNet((depth - 2) // 6, num_classes, batchnorm, width)
