"""Caffe: ``.caffemodel`` (binary NetParameter) and ``.prototxt`` (protobuf text format).

The binary side is a small protobuf wire-format reader/writer for the few caffe.proto fields
that hold weights: ``NetParameter.layer`` (100, LayerParameter: name 1, type 2, blobs 7) and the
legacy ``NetParameter.layers`` (2, V1LayerParameter: name 4, type 5 as an enum, blobs 6).
``BlobProto``: legacy num/channels/height/width 1-4, data 5, diff 6, shape 7 (BlobShape, dim 1),
double_data 8. Packed and unpacked repeated fields are both accepted; other fields are skipped.

Blob 0 is ``weight`` and blob 1 ``bias`` (flattened). A weight given by legacy 4-D dims keeps
them, except that InnerProduct drops leading 1s, as Caffe's (1, 1, out, in) becomes (out, in).
Caffe's BatchNorm blobs (mean, variance, scale factor) become ``running_mean`` and
``running_var`` divided by the factor, as Caffe does; a Scale layer right after a BatchNorm
gives that layer its ``weight`` and ``bias``. A message cut exactly at a layer boundary is
still valid protobuf, so such a truncation can only show up as missing layers.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ...errors import FormatError
from ...io import atomic_write_bytes
from . import Layers

V1_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}
"""V1LayerParameter.LayerType values of the layers that carry weights."""

_WEIGHTED = ("Convolution", "Deconvolution", "InnerProduct", "Scale")


class _Bad(Exception):
    """Damaged bytes or text; re-raised as FormatError with the file name."""


# --- protobuf text format ------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<space>\s+|\#[^\n]*)
    |(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<word>[\w.+-]+)
    |(?P<punct>[{}<>:\[\],;])""",
    re.X,
)
_CLOSE = {"{": "}", "<": ">"}


def _tokens(text: str) -> Iterator[tuple[str, str, int]]:
    pos, line = 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise _Bad(f"line {line}: unexpected character {text[pos]!r}")
        if match.lastgroup != "space":
            yield match.lastgroup, match.group(), line
        line += match.group().count("\n")
        pos = match.end()


def _scalar(kind: str, token: str, line: int) -> object:
    if kind == "str":
        try:
            return ast.literal_eval(token)
        except (ValueError, SyntaxError):
            raise _Bad(f"line {line}: bad string {token}") from None
    if kind != "word":
        raise _Bad(f"line {line}: expected a value, got {token!r}")
    if token in ("true", "True"):
        return True
    if token in ("false", "False"):
        return False
    if re.fullmatch(r"[-+]?(\d|\.\d|inf|nan).*", token):
        try:
            return int(token, 0)
        except ValueError:
            try:
                return float(re.sub(r"(?<=[\d.])[fF]$", "", token))
            except ValueError:
                raise _Bad(f"line {line}: bad number {token}") from None
    return token  # an enum value


def _add(message: dict, key: str, value: object) -> None:
    if key not in message:
        message[key] = value
    elif isinstance(message[key], list):
        message[key].append(value)
    else:
        message[key] = [message[key], value]


def parse_prototxt(text: str) -> dict:
    """Parse protobuf text format into nested dicts; a repeated key holds a list.

    Quoted strings become str, numbers int or float, true/false bool, enum values bare str.
    Raises FormatError("prototxt: ...") on malformed text.
    """
    try:
        return _parse(list(_tokens(text)))
    except _Bad as e:
        raise FormatError(f"prototxt: {e}") from None


def _parse(tokens: list[tuple[str, str, int]]) -> dict:
    root: dict = {}
    stack: list[tuple[dict, str, int]] = [(root, "", 0)]  # message, closing token, its line
    i = 0
    while i < len(tokens):
        kind, token, line = tokens[i]
        i += 1
        if token in (",", ";"):
            continue
        if token in ("}", ">"):
            if token != stack[-1][1]:
                raise _Bad(f"line {line}: unbalanced {token!r}")
            stack.pop()
            continue
        if kind != "word":
            raise _Bad(f"line {line}: expected a field name, got {token!r}")
        colon = i < len(tokens) and tokens[i][1] == ":"
        i += colon
        if i >= len(tokens):
            raise _Bad(f"line {line}: field {token!r} has no value")
        vkind, value, vline = tokens[i]
        i += 1
        if value in _CLOSE:
            child: dict = {}
            _add(stack[-1][0], token, child)
            stack.append((child, _CLOSE[value], vline))
        elif not colon:
            raise _Bad(f"line {vline}: expected ':' or '{{' after {token!r}")
        elif value == "[":
            items = []
            while i < len(tokens) and tokens[i][1] != "]":
                if tokens[i][1] != ",":
                    items.append(_scalar(*tokens[i]))
                i += 1
            if i >= len(tokens):
                raise _Bad(f"line {vline}: unclosed '['")
            i += 1
            for item in items:
                _add(stack[-1][0], token, item)
        else:
            _add(stack[-1][0], token, _scalar(vkind, value, vline))
    if len(stack) > 1:
        raise _Bad(f"line {stack[-1][2]}: unbalanced braces, this block is never closed")
    return root


def read_prototxt(path: str | Path) -> dict:
    """:func:`parse_prototxt` of a file, with errors naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot read as text ({e})") from None
    try:
        return _parse(list(_tokens(text)))
    except _Bad as e:
        raise FormatError(f"{path}: {e}") from None


def as_list(value: object) -> list:
    """A repeated field as a list, whether it occurred zero, one or many times."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


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


# --- protobuf wire format ------------------------------------------------------------------


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _Bad(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Bad(f"varint longer than 10 bytes at byte {pos}")


def _fields(buf: memoryview, base: int = 0) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value): an int for varints, the bytes for everything else."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Bad(f"field number 0 at byte {base + pos}")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            size = {1: 8, 5: 4}.get(wire)
            if size is None:
                size, pos = _varint(buf, pos)
            if size > len(buf) - pos:
                raise _Bad(f"field {field} at byte {base + pos} runs {size} bytes past the end")
            value = buf[pos : pos + size]
            pos += size
        else:
            raise _Bad(f"unsupported wire type {wire} at byte {base + pos}")
        yield field, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(value: int | memoryview) -> str:
    if isinstance(value, int):
        raise _Bad("a string field holds a number")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("a string field is not UTF-8") from None


def _ints(wire: int, value: int | memoryview) -> list[int]:
    if wire == 0:
        return [_signed(value)]
    if wire != 2:
        raise _Bad(f"an integer field has wire type {wire}")
    out, pos = [], 0
    while pos < len(value):
        n, pos = _varint(value, pos)
        out.append(_signed(n))
    return out


def _blob(buf: memoryview) -> np.ndarray:
    dims: list[int] | None = None
    legacy = [0, 0, 0, 0]
    has_legacy = False
    data = {5: bytearray(), 8: bytearray()}
    for field, wire, value in _fields(buf):
        if field in (1, 2, 3, 4):
            if wire != 0:
                raise _Bad(f"blob dimension field {field} has wire type {wire}")
            legacy[field - 1] = _signed(value)
            has_legacy = True
        elif field == 7 and wire == 2:
            dims = [d for f, w, v in _fields(value) if f == 1 for d in _ints(w, v)]
        elif field in data:
            if wire not in (2, 5 if field == 5 else 1):
                raise _Bad(f"blob data field {field} has wire type {wire}")
            data[field] += value
    # Caffe prefers the legacy dims whenever any of them is set.
    shape = legacy if has_legacy else (dims or [])
    if any(d < 0 for d in shape):
        raise _Bad(f"negative blob dimension {shape}")
    raw, dtype = (data[5], "<f4") if data[5] or not data[8] else (data[8], "<f8")
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize or len(raw) // itemsize != math.prod(shape):
        raise _Bad(f"blob of shape {tuple(shape)} holds {len(raw) / itemsize:g} values")
    return np.frombuffer(raw, dtype).astype(dtype[1:], copy=False).reshape(shape)


def _layer(buf: memoryview, v1: bool) -> tuple[str, str, list[np.ndarray]]:
    name_field, type_field, blob_field = (4, 5, 6) if v1 else (1, 2, 7)
    name, kind, blobs = "", "", []
    for field, wire, value in _fields(buf):
        if field == name_field:
            name = _text(value)
        elif field == type_field:
            if v1:
                if wire != 0:
                    raise _Bad("a V1 layer type is not an enum")
                kind = V1_TYPES.get(value, f"V1 type {value}")
            else:
                kind = _text(value)
        elif field == blob_field:
            if wire != 2:
                raise _Bad(f"layer {name!r}: blob field has wire type {wire}")
            try:
                blobs.append(_blob(value))
            except _Bad as e:
                raise _Bad(f"layer {name!r}: {e}") from None
    return name, kind, blobs


def _params(name: str, kind: str, blobs: list[np.ndarray]) -> dict[str, np.ndarray]:
    if kind == "BatchNorm":
        if len(blobs) != 3 or blobs[2].size != 1 or blobs[0].size != blobs[1].size:
            raise _Bad(f"layer {name!r}: BatchNorm needs mean, variance and one scale factor")
        factor = blobs[2].reshape(-1)[0]
        scale = np.float32(0 if factor == 0 else 1 / factor)
        mean, var = blobs[0].reshape(-1), blobs[1].reshape(-1)
        if factor != 1:
            mean, var = (mean * scale).astype(mean.dtype), (var * scale).astype(var.dtype)
        return {"running_mean": mean, "running_var": var}
    if kind not in _WEIGHTED:
        raise _Bad(f"layer {name!r}: unsupported layer type {kind!r} with weights")
    if len(blobs) > 2:
        raise _Bad(f"layer {name!r}: {kind} with {len(blobs)} blobs")
    weight = blobs[0]
    if kind == "Scale":
        weight = weight.reshape(-1)
    elif kind == "InnerProduct" and weight.ndim > 2 and all(d == 1 for d in weight.shape[:-2]):
        weight = weight.reshape(weight.shape[-2:])
    params = {"weight": weight}
    if len(blobs) == 2:
        params["bias"] = blobs[1].reshape(-1)
    return params


def read_caffemodel(path: str | Path) -> Layers:
    """Every layer with weights, in file order: [(layer name, {"weight", "bias", ...})]."""
    try:
        data = memoryview(Path(path).read_bytes())
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    layers: Layers = []
    previous = ""
    try:
        for field, wire, value in _fields(data):
            if field not in (2, 100):
                continue
            if wire != 2:
                raise _Bad(f"layer field has wire type {wire}")
            name, kind, blobs = _layer(value, v1=field == 2)
            if not blobs:
                continue
            params = _params(name, kind, blobs)
            if kind == "Scale" and previous == "BatchNorm" and "weight" not in layers[-1][1]:
                layers[-1][1].update(params)
            else:
                layers.append((name, params))
            previous = kind
    except _Bad as e:
        raise FormatError(f"{path}: {e}") from None
    if not layers:
        raise FormatError(f"{path}: no layers with weights (not a Caffe model?)")
    return layers


def _enc_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _enc_bytes(field: int, payload: bytes) -> bytes:
    return _enc_varint(field << 3 | 2) + _enc_varint(len(payload)) + payload


def _enc_int(field: int, value: int) -> bytes:
    return _enc_varint(field << 3) + _enc_varint(value)


def _enc_blob(array: np.ndarray, legacy: bool) -> bytes:
    array = np.asarray(array)
    if legacy:
        if array.ndim > 4:
            raise ValueError(f"a legacy blob has at most 4 dims, got shape {array.shape}")
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(_enc_int(field, d) for field, d in enumerate(dims, 1))
    else:
        head = _enc_bytes(7, _enc_bytes(1, b"".join(_enc_varint(d) for d in array.shape)))
    return head + _enc_bytes(5, np.ascontiguousarray(array, "<f4").tobytes())


def _default_type(params: dict[str, np.ndarray]) -> str:
    if "running_mean" in params:
        return "BatchNorm"
    return "Convolution" if np.ndim(params.get("weight")) == 4 else "InnerProduct"


def _enc_layer(name: str, kind: str, blobs: list[np.ndarray], legacy: bool) -> bytes:
    if legacy:
        codes = {v: k for k, v in V1_TYPES.items()}
        if kind not in codes:
            raise ValueError(f"layer {name!r}: {kind} has no V1 layer type")
        head = _enc_bytes(4, name.encode()) + _enc_int(5, codes[kind])
        return _enc_bytes(2, head + b"".join(_enc_bytes(6, _enc_blob(b, True)) for b in blobs))
    head = _enc_bytes(1, name.encode()) + _enc_bytes(2, kind.encode())
    return _enc_bytes(100, head + b"".join(_enc_bytes(7, _enc_blob(b, False)) for b in blobs))


def _enc_layers(name: str, kind: str, params: dict[str, np.ndarray], legacy: bool) -> bytes:
    keys = set(params) - {"num_batches_tracked"}
    if kind == "BatchNorm":
        stats, affine = {"running_mean", "running_var"}, {"weight", "bias"}
        if not stats <= keys <= stats | affine:
            raise ValueError(f"layer {name!r}: BatchNorm needs running_mean and running_var")
        if legacy:
            raise ValueError(f"layer {name!r}: BatchNorm has no V1 layer type")
        blobs = [params["running_mean"], params["running_var"], np.ones(1, np.float32)]
        out = _enc_layer(name, "BatchNorm", blobs, legacy)
        scale = [params[k] for k in ("weight", "bias") if k in params]
        return out + (_enc_layer(f"{name}/scale", "Scale", scale, legacy) if scale else b"")
    if "weight" not in keys or not keys <= {"weight", "bias"}:
        raise ValueError(f"layer {name!r}: {kind} takes weight and bias, got {sorted(keys)}")
    blobs = [params["weight"]] + ([params["bias"]] if "bias" in params else [])
    return _enc_layer(name, kind, blobs, legacy)


def write_caffemodel(
    path: str | Path,
    layers: Layers,
    *,
    types: dict[str, str] | None = None,
    legacy: bool = False,
    net_name: str = "",
) -> None:
    """Write a NetParameter holding ``layers`` as float32 blobs, atomically.

    ``types`` maps layer names to Caffe types; by default a 4-D weight is a Convolution,
    other weights InnerProduct, and running statistics a BatchNorm (plus a Scale layer
    ``<name>/scale`` for its weight and bias). ``legacy`` writes V1 ``layers`` with enum types
    and num/channels/height/width dims, which has no BatchNorm.
    """
    path = Path(path)
    try:
        chunks = [_enc_bytes(1, net_name.encode())] if net_name else []
        for name, params in layers:
            kind = (types or {}).get(name) or _default_type(params)
            chunks.append(_enc_layers(name, kind, params, legacy))
    except ValueError as e:
        raise FormatError(f"{path}: {e}") from None
    atomic_write_bytes(path, b"".join(chunks))
