"""Caffe ``.prototxt`` nets: parsed from protobuf text, with every Convolution's weight shape.

Shared by the Caffe reader (conv10's padding) and the Deep Compression reader (its file holds
no shapes). Channels are tracked through the blob graph: Concat adds them, Convolution sets
them, every other layer passes on its first input's.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ...errors import FormatError
from ._protobuf import DecodeError, as_list, parse_text


def parse_prototxt(text: str) -> dict:
    """Parse protobuf text format into nested dicts; a repeated key holds a list.

    Quoted strings become str, numbers int or float, true/false bool, enum values bare str.
    Raises FormatError("prototxt: ...") on malformed text.
    """
    try:
        return parse_text(text)
    except DecodeError as e:
        raise FormatError(f"prototxt: {e}") from None


def read_prototxt(path: str | Path) -> dict:
    """:func:`parse_prototxt` of a file, with errors naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot read as text ({e})") from None
    try:
        return parse_text(text)
    except DecodeError as e:
        raise FormatError(f"{path}: {e}") from None


def prototxt_layers(net: dict) -> list[dict]:
    """The layers of a parsed net, from ``layer`` or the legacy ``layers``."""
    layers = as_list(net.get("layer")) + as_list(net.get("layers"))
    if not all(isinstance(layer, dict) for layer in layers):
        raise FormatError("prototxt: a layer is not a { ... } block")
    return layers


class ConvSpec(NamedTuple):
    """One Convolution layer of a prototxt: weight shape (out, in/group, kh, kw) and geometry."""

    name: str
    shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    group: int


def _pair(param: dict, key: str, default: int) -> tuple[int, int]:
    values = as_list(param.get(key))
    h = param.get(f"{key}_h", values[0] if values else default)
    w = param.get(f"{key}_w", values[-1] if values else default)
    return int(h), int(w)


def _input_channels(net: dict, default: int) -> dict[str, int]:
    dims = [int(d) for d in as_list(net.get("input_dim"))]
    shapes = as_list(net.get("input_shape"))
    channels = {}
    for k, name in enumerate(as_list(net.get("input"))):
        if len(dims) >= 4 * k + 2:
            channels[name] = dims[4 * k + 1]
        elif k < len(shapes) and len(as_list(shapes[k].get("dim"))) > 1:
            channels[name] = int(as_list(shapes[k]["dim"])[1])
        else:
            channels[name] = default
    return channels


def conv_specs(net: dict, input_channels: int = 3, source: str = "prototxt") -> list[ConvSpec]:
    """Every Convolution layer in file order, channels tracked through the blob graph.

    Concat adds channels, Convolution sets them, every other layer passes on its first
    input's; the net's inputs have ``input_dim[1]`` / ``input_shape`` or ``input_channels``.
    Errors start with ``source`` (the prototxt's path, where known).
    """
    channels = _input_channels(net, input_channels)
    specs = []
    for layer in prototxt_layers(net):
        name = layer.get("name", "?")
        try:
            spec = _conv_spec(layer, channels, input_channels)
        except ValueError as e:
            raise FormatError(f"{source}: layer {name}: {e}") from None
        except (KeyError, TypeError, AttributeError, ZeroDivisionError) as e:
            raise FormatError(f"{source}: layer {name}: bad or missing field {e}") from None
        specs += [spec] if spec else []
    return specs


def _conv_spec(layer: dict, channels: dict[str, int], default: int) -> ConvSpec | None:
    """Record the channels of the layer's outputs; its ConvSpec if it is a Convolution."""
    name, kind = layer.get("name", "?"), layer.get("type")
    missing = [b for b in as_list(layer.get("bottom")) if b not in channels]
    if missing:
        raise ValueError(f"unknown input blob {missing[0]!r}")
    inputs = [channels[b] for b in as_list(layer.get("bottom"))]
    if not inputs:  # a data layer
        shapes = as_list(layer.get("input_param", {}).get("shape"))
        dims = as_list(shapes[0].get("dim")) if shapes else []
        inputs = [int(dims[1]) if len(dims) > 1 else default]
    spec = None
    if kind in ("Convolution", "CONVOLUTION"):
        param = layer["convolution_param"]
        out, group = int(param["num_output"]), int(param.get("group", 1))
        kernel = _pair(param, "kernel_size", 0)
        if "kernel_h" in param:
            kernel = (int(param["kernel_h"]), int(param["kernel_w"]))
        if min(kernel) < 1 or out < 1 or inputs[0] % group:
            raise ValueError("bad convolution_param")
        shape = (out, inputs[0] // group, *kernel)
        spec = ConvSpec(name, shape, _pair(param, "stride", 1), _pair(param, "pad", 0), group)
        count = out
    elif kind in ("Concat", "CONCAT") and layer.get("concat_param", {}).get("axis", 1) == 1:
        count = sum(inputs)
    else:
        count = inputs[0]
    channels.update(dict.fromkeys(as_list(layer.get("top")), count))
    return spec


def conv_shapes(
    net: dict, input_channels: int = 3, source: str = "prototxt"
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """[(name, (out, in/group, kh, kw))] of every Convolution layer, in file order."""
    return [(spec.name, spec.shape) for spec in conv_specs(net, input_channels, source)]


def read_conv_specs(path: Path) -> list[ConvSpec]:
    """The Convolution layers of the prototxt file ``path``; FormatError names the file."""
    try:
        specs = conv_specs(read_prototxt(path))
    except FormatError as e:
        raise FormatError(f"{path}: {str(e).removeprefix('prototxt: ')}") from None
    if not specs:
        raise FormatError(f"{path}: no Convolution layers")
    return specs
