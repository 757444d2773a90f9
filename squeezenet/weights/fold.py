"""Fold a change of input normalisation into the first convolution, where that is exact.

Two presets with the same geometry (resize, crop) feed a network the same pixels, differing
only per channel: order (RGB/BGR), scale, mean and std, i.e. ``x_source[c] = a[c] *
x_target[j(c)] + b[c]``. A convolution without padding that sees the input first absorbs that
affine map exactly: its weights are scaled and permuted, ``b`` goes into its bias. Padding
would break it (the padded zeros of one input are not those of the other), as would any
difference in geometry, which no weight can undo.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from ..data.transforms import Preprocess

GEOMETRY = ("resize", "crop", "square_resize")
NORMALISATION = ("bgr", "scale", "mean", "std")


def same_input(a: Preprocess, b: Preprocess) -> bool:
    """Whether two presets give a network the same input (their names aside)."""
    return all(getattr(a, f) == getattr(b, f) for f in GEOMETRY + NORMALISATION)


def same_pixels(a: Preprocess, b: Preprocess) -> bool:
    """Whether two presets take the same pixels from an image (same resize and crop)."""
    return all(getattr(a, f) == getattr(b, f) for f in GEOMETRY)


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The convolution that sees the image first, if the model starts with one (``features[0]``)."""
    features = getattr(model, "features", None)
    first = features[0] if isinstance(features, nn.Sequential) and len(features) else None
    return first if isinstance(first, nn.Conv2d) else None


def why_not_foldable(model: nn.Module, source: Preprocess, target: Preprocess) -> str | None:
    """None when ``source``'s input can be made ``target``'s by folding; else the reason."""
    if not same_pixels(source, target):
        return "resize and crop differ"
    conv = first_conv(model)
    if conv is None or conv.in_channels != 3 or conv.groups != 1:
        return "the model does not start with a 3-channel convolution"
    if any(conv.padding) or conv.bias is None:
        return "its first convolution pads its input or has no bias"
    return None


def _affine(source: Preprocess, target: Preprocess) -> tuple[list[int], np.ndarray, np.ndarray]:
    """For each source channel c: the target channel j holding the same colour, a[c], b[c]."""
    order, a, b = [], np.zeros(3), np.zeros(3)
    for c in range(3):
        colour = 2 - c if source.bgr else c  # index in RGB
        j = 2 - colour if target.bgr else colour
        # target: x_t = (p * s_t - m_t) / d_t, so p = (x_t * d_t + m_t) / s_t
        ratio = source.scale / target.scale
        a[c] = ratio * target.std[j] / source.std[c]
        b[c] = (ratio * target.mean[j] - source.mean[c]) / source.std[c]
        order.append(j)
    return order, a, b


def fold_input(model: nn.Module, source: Preprocess, target: Preprocess) -> nn.Module:
    """A copy of ``model`` that gives on ``target``'s input what ``model`` gives on ``source``'s.

    Its ``weights_info`` (when present) says ``target``. Call ``why_not_foldable`` first.
    """
    folded = copy.deepcopy(model)
    conv = first_conv(folded)
    order, a, b = _affine(source, target)
    weight = conv.weight.detach().double()
    new_weight = torch.empty_like(weight)
    for c, j in enumerate(order):
        new_weight[:, j] = weight[:, c] * a[c]
    shift = (weight.sum(dim=(2, 3)) * torch.from_numpy(b).to(weight)).sum(dim=1)
    with torch.no_grad():
        conv.weight.copy_(new_weight.to(conv.weight.dtype))
        conv.bias.copy_((conv.bias.double() + shift).to(conv.bias.dtype))
    info = getattr(folded, "weights_info", None)
    if info is not None:
        folded.weights_info = dataclasses.replace(info, preprocess=target)
    return folded
