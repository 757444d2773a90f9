"""Parameter count, float32 size and multiply-accumulates of a model at an input size."""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..errors import SqueezeNetError


def count_macs(model: nn.Module, image_size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of conv and linear layers for one image (hooks on a real forward)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))
        model.train(was_training)
    except RuntimeError as e:
        if "too small" not in str(e):
            raise
        raise SqueezeNetError(
            f"input of {image_size}x{image_size} is too small for {type(model).__name__}"
        ) from None
    finally:
        for h in hooks:
            h.remove()
    return total


def model_stats(model: nn.Module, image_size: int) -> dict:
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "size_mb": params * 4 / 1e6, "macs": count_macs(model, image_size)}


@functools.cache
def min_input_size(arch: str, limit: int = 1024) -> int:
    """The smallest input side ``arch`` takes (its pools and its last conv need some room);
    ``limit`` + 1 when it takes none up to ``limit``. Shapes only: the model runs on the meta
    device, which computes no numbers."""
    from .registry import build_model

    with torch.device("meta"):
        model = build_model(arch).eval()

    def fits(size: int) -> bool:
        try:
            model(torch.zeros(1, 3, size, size, device="meta"))
        except RuntimeError as e:
            if "too small" not in str(e):
                raise
            return False
        return True

    lo, hi = 1, limit + 1  # bisection: every side from the smallest up fits (layers only shrink)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo
