"""SqueezeNet v1.0 / v1.1 (Iandola et al. 2016) and its variants.

The plain models match torchvision's ``squeezenet1_0`` / ``squeezenet1_1`` module for module,
so their state-dict keys (``features.N.squeeze.weight``, ``classifier.1.weight``) map 1:1.
Variants are options of the same class:

* ``bypass="simple" | "complex"``: the paper's residual connections around Fire modules
  (simple: identity where channel counts agree; complex: also a 1x1 conv elsewhere).
* ``batch_norm=True``: BatchNorm after each Fire module's concatenation (then ReLU), the
  layout of the old Chainer repo.
* ``classifier_padding=1``: conv10 with ``pad: 1`` as in DeepScale's Caffe v1.0 prototxt
  (a 15x15 map before the average); a property recorded with Caffe-origin weights.
* ``pool_window=13``: average a fixed 13x13 window (stride 13) instead of a global average,
  the old Chainer repo's ``average_pooling_2d(h, 13)``.
* ``dense_head=True``: an extra fully connected layer after the pooled conv10 output, as the
  old repo added to fit its own labels.
"""

from __future__ import annotations

import torch
from torch import nn

# (squeeze, expand) channels of the eight Fire modules, and where the max pools go.
_FIRES = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]
_POOLS_AFTER = {"1_0": (3, 7), "1_1": (2, 4)}  # pool after the N-th fire (1-based count)


class Fire(nn.Module):
    """Squeeze 1x1 -> ReLU -> [expand 1x1, expand 3x3] -> ReLU -> concat (+ bypass)."""

    def __init__(
        self,
        in_channels: int,
        squeeze: int,
        expand1x1: int,
        expand3x3: int,
        *,
        batch_norm: bool = False,
        bypass: str | None = None,
    ) -> None:
        super().__init__()
        out_channels = expand1x1 + expand3x3
        self.squeeze = nn.Conv2d(in_channels, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        if batch_norm:
            self.bn = nn.BatchNorm2d(out_channels, eps=2e-5)
        else:
            self.expand1x1_activation = nn.ReLU(inplace=True)
            self.expand3x3_activation = nn.ReLU(inplace=True)
        self.batch_norm = batch_norm
        self.bypass: nn.Module | None = None
        if bypass == "complex" and in_channels != out_channels:
            self.bypass = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        elif bypass in ("simple", "complex") and in_channels == out_channels:
            self.bypass = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_activation(self.squeeze(x))
        if self.batch_norm:
            out = torch.relu(self.bn(torch.cat([self.expand1x1(s), self.expand3x3(s)], 1)))
        else:
            out = torch.cat(
                [
                    self.expand1x1_activation(self.expand1x1(s)),
                    self.expand3x3_activation(self.expand3x3(s)),
                ],
                1,
            )
        if self.bypass is not None:
            out = out + self.bypass(x)
        return out


# conv10 is followed by a ReLU: a class map pushed below zero everywhere gets no gradient again,
# and with few classes (most images push a map down) biases of 0 let a useful learning rate
# kill class maps early in training. Biases of 1 give the ReLUs positive inputs at the start,
# as Krizhevsky et al. (2012) did for AlexNet's ReLU layers; only differences between the
# logits matter to the softmax, so the offset itself costs nothing.
CONV10_BIAS = 1.0


class SqueezeNet(nn.Module):
    """SqueezeNet with torchvision's module layout; see the module docstring for options."""

    def __init__(
        self,
        version: str = "1_0",
        num_classes: int = 1000,
        *,
        dropout: float = 0.5,
        bypass: str | None = None,
        batch_norm: bool = False,
        classifier_padding: int = 0,
        pool_window: int | None = None,
        dense_head: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if version not in _POOLS_AFTER:
            raise ValueError(f"unknown SqueezeNet version {version!r}; expected 1_0 or 1_1")
        if bypass not in (None, "simple", "complex"):
            raise ValueError(f"bypass must be None, 'simple' or 'complex', not {bypass!r}")
        self.version = version
        self.num_classes = num_classes
        self.dense_head = dense_head
        if version == "1_0":
            layers: list[nn.Module] = [nn.Conv2d(in_chans, 96, kernel_size=7, stride=2)]
            channels = 96
        else:
            layers = [nn.Conv2d(in_chans, 64, kernel_size=3, stride=2)]
            channels = 64
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True)]
        for i, (squeeze, expand) in enumerate(_FIRES, start=1):
            layers.append(
                Fire(channels, squeeze, expand, expand, batch_norm=batch_norm, bypass=bypass)
            )
            channels = 2 * expand
            if i in _POOLS_AFTER[version]:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        conv10_out = 1000 if dense_head else num_classes
        pool = nn.AdaptiveAvgPool2d(1) if pool_window is None else nn.AvgPool2d(pool_window)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Conv2d(channels, conv10_out, kernel_size=1, padding=classifier_padding),
            nn.ReLU(inplace=True),
            pool,
        )
        self.fc = nn.Linear(conv10_out, num_classes) if dense_head else None
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation, but conv10's biases start at 1 (see CONV10_BIAS)."""
        final_conv = self.classifier[1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, CONV10_BIAS if m is final_conv else 0.0)

    def get_classifier(self) -> nn.Module:
        return self.fc if self.fc is not None else self.classifier[1]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last layer with a freshly initialised one for ``num_classes``."""
        self.num_classes = num_classes
        if self.fc is not None:
            self.fc = nn.Linear(self.fc.in_features, num_classes)
            return
        old = self.classifier[1]
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1, padding=old.padding)
        nn.init.normal_(new.weight, mean=0.0, std=0.01)
        nn.init.zeros_(new.bias)
        self.classifier[1] = new

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Dropout, conv10, ReLU, pool; ``pre_logits`` returns the pooled features instead."""
        if pre_logits:
            return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        x = torch.flatten(self.classifier(x), 1)
        return self.fc(x) if self.fc is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def squeezenet1_0(**kwargs) -> SqueezeNet:
    """SqueezeNet v1.0: 1,248,424 parameters for 1,000 classes, 7x7 conv1 with 96 filters."""
    return SqueezeNet("1_0", **kwargs)


def squeezenet1_1(**kwargs) -> SqueezeNet:
    """SqueezeNet v1.1: 2.4x less computation than v1.0 at about the same accuracy."""
    return SqueezeNet("1_1", **kwargs)


def squeezenet1_0_bypass(**kwargs) -> SqueezeNet:
    """v1.0 with the paper's simple bypass (identity around fire3, 5, 7, 9)."""
    return SqueezeNet("1_0", bypass="simple", **kwargs)


def squeezenet1_0_complex_bypass(**kwargs) -> SqueezeNet:
    """v1.0 with the paper's complex bypass (1x1 conv where channel counts differ)."""
    return SqueezeNet("1_0", bypass="complex", **kwargs)


def squeezenet1_0_bn(**kwargs) -> SqueezeNet:
    """v1.0 with BatchNorm after every Fire concat and a dense head on the 1000 outputs."""
    kwargs.setdefault("dense_head", True)
    return SqueezeNet("1_0", batch_norm=True, **kwargs)


def squeezenet1_1_bn(**kwargs) -> SqueezeNet:
    """v1.1 with BatchNorm after every Fire concat (trains from scratch at high LR)."""
    return SqueezeNet("1_1", batch_norm=True, **kwargs)


def squeezenet1_0_chainer(**kwargs) -> SqueezeNet:
    """The old Chainer repo's network: BatchNorm Fires, conv10 pad 1, 13x13 average window."""
    kwargs.setdefault("classifier_padding", 1)
    kwargs.setdefault("pool_window", 13)
    return SqueezeNet("1_0", batch_norm=True, **kwargs)
