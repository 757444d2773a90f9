"""squeezenet: SqueezeNet for PyTorch, with real pretrained weights from every format.

The functions below are imported on first use (PEP 562), so that ``import squeezenet`` (and the
``squeezenet`` command's ``--help``) does not pay for torch and onnx until they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import FormatError, SqueezeNetError

if TYPE_CHECKING:
    from .inference.backends import optimize
    from .models import list_models
    from .weights.entries import get_weights, list_weights
    from .weights.load import create_model, load_model, save_model

_LAZY = {
    "optimize": ".inference.backends",
    "list_models": ".models",
    "get_weights": ".weights.entries",
    "list_weights": ".weights.entries",
    "create_model": ".weights.load",
    "load_model": ".weights.load",
    "save_model": ".weights.load",
}

__all__ = [
    "FormatError",
    "SqueezeNetError",
    "create_model",
    "get_weights",
    "list_models",
    "list_weights",
    "load_model",
    "optimize",
    "save_model",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'squeezenet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
