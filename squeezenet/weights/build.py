"""From what a reader found (``Contents``) to a model: the metadata completed, the module built,
the weights assigned. Shared by loading and by the read-back check of every written file."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FormatError
from ..models.registry import build_model
from .formats import Contents
from .layers import arch_of_layers, arch_of_state, assign_layers


def describe(contents: Contents) -> dict:
    """The file's metadata with arch, model_kwargs and num_classes filled in from the arrays."""
    meta = dict(contents.meta)
    if contents.state is not None:
        if not meta.get("arch"):
            arch, kwargs, num_classes = arch_of_state(contents.state)
            meta.update(arch=arch, model_kwargs=kwargs, num_classes=num_classes)
    else:
        if not meta.get("arch"):  # only then: arch_of_layers knows SqueezeNets alone
            meta["arch"] = arch_of_layers(contents.layers)[0]
        meta["num_classes"] = int(contents.layers[-1][1]["weight"].shape[0])
    meta["model_kwargs"] = dict(meta.get("model_kwargs") or {})
    return meta


def build(meta: dict) -> nn.Module:
    """The architecture ``meta`` describes, with random weights."""
    try:
        return build_model(meta["arch"], num_classes=meta["num_classes"], **meta["model_kwargs"])
    except (TypeError, ValueError) as e:  # metadata naming options the builder does not have
        raise FormatError(f"metadata describes no buildable {meta['arch']} ({e})") from None


def assign(model: nn.Module, contents: Contents, arch: str, source: str) -> None:
    """Load the file's arrays into ``model``: a state strictly by key, layers by position."""
    if contents.state is not None:
        state = {k: torch.from_numpy(v) for k, v in contents.state.items()}
    else:
        state = assign_layers(model, contents.layers, source)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:2]
        raise FormatError(f"{source}: weights do not fit {arch}: {' '.join(first)}") from None
