"""Match foreign layer lists to a model: infer the arch, assign layers by position and shape."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import FormatError
from .formats import Layers


def arch_of_state(state: dict[str, np.ndarray]) -> tuple[str, dict, int]:
    """Infer (arch, model kwargs, num_classes) from a torchvision-style state dict."""
    first = state.get("features.0.weight")
    if first is None:
        raise FormatError("state dict has no 'features.0.weight': not a model of this package")
    if "classifier.6.weight" in state:  # AlexNet-style fully connected head
        arch = "zfnet" if first.shape[-1] == 7 else "alexnet"
        return arch, {}, int(state["classifier.6.weight"].shape[0])
    arch = "squeezenet1_0" if first.shape[-1] == 7 else "squeezenet1_1"
    kwargs: dict = {"dense_head": "fc.weight" in state}
    if any(k.endswith(".bn.weight") for k in state):
        arch += "_bn"
    if any(k.endswith(".bypass.weight") for k in state):
        # a simple (identity) bypass leaves no trace in the keys; a complex one is named
        if arch == "squeezenet1_0":
            arch = "squeezenet1_0_complex_bypass"
        else:
            kwargs["bypass"] = "complex"
    head = state["fc.weight"] if kwargs["dense_head"] else state["classifier.1.weight"]
    return arch, kwargs, int(head.shape[0])


def arch_of_layers(layers: Layers) -> tuple[str, int]:
    """Infer (arch, num_classes) from layers in data-flow order."""
    first = layers[0][1]["weight"]
    if first.shape[0] == 96 and first.shape[-1] == 7:
        arch = "squeezenet1_0"
    elif first.shape[0] == 64 and first.shape[-1] == 3:
        arch = "squeezenet1_1"
    else:
        raise FormatError(f"first layer of shape {first.shape} matches no SqueezeNet version")
    return arch, int(layers[-1][1]["weight"].shape[0])


def assign_layers(model: nn.Module, layers: Layers, source: str) -> dict[str, torch.Tensor]:
    """Map layers in data-flow order onto the model's parametrised modules, checking shapes."""
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d)
    ]
    if len(targets) != len(layers):
        raise FormatError(
            f"{source}: holds {len(layers)} layers but {type(model).__name__} has {len(targets)}"
        )
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for (module_name, _), (layer_name, params) in zip(targets, layers, strict=True):
        for pname, array in params.items():
            key = f"{module_name}.{pname}"
            if key not in expected:
                raise FormatError(f"{source}: layer {layer_name!r} has {pname!r}, {key} does not")
            tensor = torch.from_numpy(np.array(array, copy=True))
            if key.endswith("num_batches_tracked"):
                tensor = tensor.reshape(()).to(torch.long)
            elif tuple(tensor.shape) != tuple(expected[key].shape):
                if tensor.numel() == expected[key].numel() and tensor.ndim != expected[key].ndim:
                    tensor = tensor.reshape(expected[key].shape)  # e.g. Caffe's 4-d fc blobs
                else:
                    raise FormatError(
                        f"{source}: layer {layer_name!r} {pname} has shape {tuple(tensor.shape)}, "
                        f"expected {tuple(expected[key].shape)} for {key}"
                    )
            state[key] = tensor.to(expected[key].dtype)
    for key, value in expected.items():  # e.g. num_batches_tracked absent from the file
        state.setdefault(key, value)
    return state


def model_layers(model: nn.Module) -> Layers:
    """The inverse of ``assign_layers``: the model's parametrised modules in data-flow order."""
    layers: Layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
            params = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
            params.pop("num_batches_tracked", None)
            layers.append((name, params))
    return layers
