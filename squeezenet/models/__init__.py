"""Model definitions (no file formats here): SqueezeNet family and baselines."""

from .baselines import AlexNet, ZFNet, alexnet, zfnet
from .registry import build_model, default_input_size, list_models, register
from .squeezenet import Fire, SqueezeNet, squeezenet1_0, squeezenet1_1

__all__ = [
    "AlexNet",
    "Fire",
    "SqueezeNet",
    "ZFNet",
    "alexnet",
    "build_model",
    "default_input_size",
    "list_models",
    "register",
    "squeezenet1_0",
    "squeezenet1_1",
    "zfnet",
]
