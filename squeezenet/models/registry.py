"""A small registry of model builders: name -> function returning an ``nn.Module``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import SqueezeNetError
from . import baselines, squeezenet

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _BUILDERS[fn.__name__] = fn
    return fn


for _fn in (
    squeezenet.squeezenet1_0,
    squeezenet.squeezenet1_1,
    squeezenet.squeezenet1_0_bypass,
    squeezenet.squeezenet1_0_complex_bypass,
    squeezenet.squeezenet1_0_bn,
    squeezenet.squeezenet1_1_bn,
    squeezenet.squeezenet1_0_chainer,
    baselines.zfnet,
    baselines.alexnet,
):
    register(_fn)


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def build_model(arch: str, **kwargs) -> nn.Module:
    """Build ``arch`` with random weights; keyword arguments go to the builder."""
    if arch not in _BUILDERS:
        raise SqueezeNetError(
            f"unknown architecture {arch!r}; choose from {', '.join(list_models())}"
        )
    return _BUILDERS[arch](**kwargs)


def default_input_size(arch: str) -> int:
    """Input side an architecture was designed for: Caffe's 227 crop for v1.0, else 224."""
    return 227 if arch.startswith("squeezenet1_0") else 224
