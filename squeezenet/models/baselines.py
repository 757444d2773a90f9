"""Baselines for comparisons: ZFNet (Zeiler & Fergus 2013) and AlexNet (torchvision layout).

Both end in an adaptive 6x6 average pool, so any input from about 63 pixels up works.
"""

from __future__ import annotations

import torch
from torch import nn


class _ConvNetWithFC(nn.Module):
    """Shared shape: ``features`` -> 6x6 pool -> ``classifier`` (dropout, fc6, fc7, fc8)."""

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.num_features = channels * 36
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(self.num_features, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        self.num_classes = num_classes

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier[-1] = nn.Linear(4096, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ZFNet(_ConvNetWithFC):
    """ZFNet: AlexNet with a 7x7/2 first layer and a 5x5/2 second layer, with LRN."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3):
        features = nn.Sequential(
            nn.Conv2d(in_chans, 96, kernel_size=7, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, padding=1),
            nn.LocalResponseNorm(5),
            nn.Conv2d(96, 256, kernel_size=5, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, padding=1),
            nn.LocalResponseNorm(5),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        super().__init__(features, 256, num_classes, dropout)


class AlexNet(_ConvNetWithFC):
    """AlexNet, single-tower, torchvision's layout (61.1 M parameters for 1000 classes)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3):
        features = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        super().__init__(features, 256, num_classes, dropout)


def zfnet(**kwargs) -> ZFNet:
    """ZFNet (Zeiler & Fergus 2013), the old repo's comparison baseline."""
    return ZFNet(**kwargs)


def alexnet(**kwargs) -> AlexNet:
    """AlexNet, the model SqueezeNet set out to match with 50x fewer parameters."""
    return AlexNet(**kwargs)
