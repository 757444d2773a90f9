"""Backends that turn a model into a callable mapping a float32 NCHW batch to logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import SqueezeNetError

Forward = Callable[[torch.Tensor], torch.Tensor]
BACKENDS = ["auto", "eager"]


def optimize(
    model: nn.Module, backend: str = "auto", example: torch.Tensor | None = None
) -> Forward:
    """A callable with the module's numbers (within 1e-4 relative for fp32 backends)."""
    if backend not in BACKENDS:
        raise SqueezeNetError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    model.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return forward
