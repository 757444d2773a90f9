"""Fold each Fire module's BatchNorm into its expand convolutions before a model leaves PyTorch.

A BatchNorm after the concatenation is, in eval mode, a per-channel affine map
``y = x * scale + shift`` with ``scale = gamma / sqrt(var + eps)`` and
``shift = beta - mean * scale``. Its first channels come from ``expand1x1`` and the rest from
``expand3x3``, so each convolution takes its share: weights times ``scale``, bias times
``scale`` plus ``shift``. The ReLU stays after the (now absent) BatchNorm; a bypass is added
after the ReLU as before. Exporters do not fold a BatchNorm that follows a concatenation, and
ONNX Runtime's int8 quantizer wraps it in quantize/dequantize pairs, which makes int8 slower
than fp32 on the BatchNorm variants.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..models import Fire


def batch_norm_fires(model: nn.Module) -> list[Fire]:
    """The Fire modules of ``model`` that still hold a BatchNorm."""
    return [
        m
        for m in model.modules()
        if isinstance(m, Fire) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)
    ]


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every Fire BatchNorm folded into expand1x1 and expand3x3.

    Returns ``model`` itself (put in eval mode) when it has nothing to fold, else a folded copy,
    so the original keeps its BatchNorm layers for training.
    """
    model.eval()
    if not batch_norm_fires(model):
        return model
    folded = copy.deepcopy(model)
    for fire in batch_norm_fires(folded):
        _fold(fire)
    return folded


@torch.no_grad()
def _fold(fire: Fire) -> None:
    bn = fire.bn
    # float64 so that the folded fp32 weights are the exact products rounded once
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    split = fire.expand1x1.out_channels
    for conv, s, t in (
        (fire.expand1x1, scale[:split], shift[:split]),
        (fire.expand3x3, scale[split:], shift[split:]),
    ):
        conv.weight.copy_(conv.weight.double() * s.view(-1, 1, 1, 1))
        conv.bias.copy_(conv.bias.double() * s + t)
    fire.bn = nn.Identity()  # Fire.forward keeps relu(bn(cat(...))): now relu(cat(...))
