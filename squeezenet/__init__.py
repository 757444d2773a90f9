"""squeezenet: SqueezeNet for PyTorch, with real pretrained weights from every format."""

from .errors import FormatError, SqueezeNetError
from .inference.backends import optimize
from .models import list_models
from .weights.entries import get_weights, list_weights
from .weights.load import create_model, load_model, save_model

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
