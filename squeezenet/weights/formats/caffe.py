"""Caffe: ``.caffemodel`` (binary NetParameter) and ``.prototxt`` (protobuf text format).

The binary side reads and writes (with ``_protobuf``) the few caffe.proto fields that hold
weights: ``NetParameter.layer`` (100, LayerParameter: name 1, type 2, blobs 7) and the
legacy ``NetParameter.layers`` (2, V1LayerParameter: name 4, type 5 as an enum, blobs 6).
``BlobProto``: legacy num/channels/height/width 1-4, data 5, diff 6, shape 7 (BlobShape, dim 1),
double_data 8. Packed and unpacked repeated fields are both accepted; other fields are skipped.

Blob 0 is ``weight`` and blob 1 ``bias`` (flattened). Legacy 4-D dims are kept, except that
InnerProduct drops leading 1s ((1, 1, out, in) becomes (out, in)). BatchNorm blobs (mean,
variance, scale factor) become ``running_mean`` and ``running_var`` divided by the factor, as
Caffe does; a Scale layer right after a BatchNorm gives it ``weight`` and ``bias``. A message
cut exactly at a layer boundary is still valid protobuf: that truncation shows as missing layers.
The prototxt side (``read_prototxt``, ``conv_specs``, ...) is in ``_prototxt``, shared with
``deep_compression``, and re-exported here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...errors import FormatError
from ...io import atomic_write_bytes
from . import Contents, Hints, Layers
from . import _protobuf as pb
from ._prototxt import (  # noqa: F401 (re-exported: the prototxt side of Caffe)
    ConvSpec,
    conv_shapes,
    conv_specs,
    parse_prototxt,
    prototxt_layers,
    read_conv_specs,
    read_prototxt,
)

SUFFIXES = (".caffemodel",)

V1_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}
"""V1LayerParameter.LayerType values of the layers that carry weights."""

_WEIGHTED = ("Convolution", "Deconvolution", "InnerProduct", "Scale")


def sniff(head: bytes) -> bool:
    return False  # a NetParameter has no magic bytes: the suffix decides


def load(path: Path, hints: Hints) -> Contents:
    """Layers in file order; conv10's padding from the prototxt, else as in Caffe's SqueezeNet
    (pad 1 in v1.0, whose conv1 is 7x7; none in v1.1)."""
    layers = read_caffemodel(path)
    pad = 1 if np.shape(layers[0][1].get("weight"))[-1:] == (7,) else 0
    if hints.prototxt is not None:
        pad = read_conv_specs(hints.prototxt)[-1].pad[0]
    meta = {"model_kwargs": {"classifier_padding": pad}, "preprocess": "caffe"}
    return Contents(layers=layers, meta=meta)


def save(path: Path, contents: Contents) -> None:
    write_caffemodel(path, contents.layers)


def _blob(buf: memoryview) -> np.ndarray:
    dims: list[int] | None = None
    legacy = [0, 0, 0, 0]
    has_legacy = False
    data = {5: bytearray(), 8: bytearray()}
    for field, wire, value in pb.fields(buf):
        if field in (1, 2, 3, 4):
            if wire != 0:
                raise pb.DecodeError(f"blob dimension field {field} has wire type {wire}")
            legacy[field - 1] = pb.signed(value)
            has_legacy = True
        elif field == 7 and wire == 2:
            dims = [d for f, w, v in pb.fields(value) if f == 1 for d in pb.ints(w, v)]
        elif field in data:
            if wire not in (2, 5 if field == 5 else 1):
                raise pb.DecodeError(f"blob data field {field} has wire type {wire}")
            data[field] += value
    # Caffe prefers the legacy dims whenever any of them is set.
    shape = legacy if has_legacy else (dims or [])
    if any(d < 0 for d in shape):
        raise pb.DecodeError(f"negative blob dimension {shape}")
    raw, dtype = (data[5], "<f4") if data[5] or not data[8] else (data[8], "<f8")
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize or len(raw) // itemsize != math.prod(shape):
        raise pb.DecodeError(f"blob of shape {tuple(shape)} holds {len(raw) / itemsize:g} values")
    return np.frombuffer(raw, dtype).astype(dtype[1:], copy=False).reshape(shape)


def _layer(buf: memoryview, v1: bool) -> tuple[str, str, list[np.ndarray]]:
    name_field, type_field, blob_field = (4, 5, 6) if v1 else (1, 2, 7)
    name, kind, blobs = "", "", []
    for field, wire, value in pb.fields(buf):
        if field == name_field:
            name = pb.text(value)
        elif field == type_field:
            if v1:
                if wire != 0:
                    raise pb.DecodeError("a V1 layer type is not an enum")
                kind = V1_TYPES.get(value, f"V1 type {value}")
            else:
                kind = pb.text(value)
        elif field == blob_field:
            if wire != 2:
                raise pb.DecodeError(f"layer {name!r}: blob field has wire type {wire}")
            try:
                blobs.append(_blob(value))
            except pb.DecodeError as e:
                raise pb.DecodeError(f"layer {name!r}: {e}") from None
    return name, kind, blobs


def _params(name: str, kind: str, blobs: list[np.ndarray]) -> dict[str, np.ndarray]:
    if kind == "BatchNorm":
        if len(blobs) != 3 or blobs[2].size != 1 or blobs[0].size != blobs[1].size:
            raise pb.DecodeError(
                f"layer {name!r}: BatchNorm needs mean, variance and one scale factor"
            )
        factor = blobs[2].reshape(-1)[0]
        scale = np.float32(0 if factor == 0 else 1 / factor)
        mean, var = blobs[0].reshape(-1), blobs[1].reshape(-1)
        if factor != 1:
            mean, var = (mean * scale).astype(mean.dtype), (var * scale).astype(var.dtype)
        return {"running_mean": mean, "running_var": var}
    if kind not in _WEIGHTED:
        raise pb.DecodeError(f"layer {name!r}: unsupported layer type {kind!r} with weights")
    if len(blobs) > 2:
        raise pb.DecodeError(f"layer {name!r}: {kind} with {len(blobs)} blobs")
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
        for field, wire, value in pb.fields(data):
            if field not in (2, 100):
                continue
            if wire != 2:
                raise pb.DecodeError(f"layer field has wire type {wire}")
            name, kind, blobs = _layer(value, v1=field == 2)
            if not blobs:
                continue
            params = _params(name, kind, blobs)
            if kind == "Scale" and previous == "BatchNorm" and "weight" not in layers[-1][1]:
                layers[-1][1].update(params)
            else:
                layers.append((name, params))
            previous = kind
    except pb.DecodeError as e:
        raise FormatError(f"{path}: {e}") from None
    if not layers:
        raise FormatError(f"{path}: no layers with weights (not a Caffe model?)")
    return layers


def _enc_blob(array: np.ndarray, legacy: bool) -> bytes:
    array = np.asarray(array)
    if legacy:
        if array.ndim > 4:
            raise ValueError(f"a legacy blob has at most 4 dims, got shape {array.shape}")
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(pb.encode_int(field, d) for field, d in enumerate(dims, 1))
    else:
        head = pb.encode_bytes(
            7, pb.encode_bytes(1, b"".join(pb.encode_varint(d) for d in array.shape))
        )
    return head + pb.encode_bytes(5, np.ascontiguousarray(array, "<f4").tobytes())


def _default_type(params: dict[str, np.ndarray]) -> str:
    if "running_mean" in params:
        return "BatchNorm"
    return "Convolution" if np.ndim(params.get("weight")) == 4 else "InnerProduct"


def _enc_layer(name: str, kind: str, blobs: list[np.ndarray], legacy: bool) -> bytes:
    if legacy:
        codes = {v: k for k, v in V1_TYPES.items()}
        if kind not in codes:
            raise ValueError(f"layer {name!r}: {kind} has no V1 layer type")
        head = pb.encode_bytes(4, name.encode()) + pb.encode_int(5, codes[kind])
        return pb.encode_bytes(
            2, head + b"".join(pb.encode_bytes(6, _enc_blob(b, True)) for b in blobs)
        )
    head = pb.encode_bytes(1, name.encode()) + pb.encode_bytes(2, kind.encode())
    return pb.encode_bytes(
        100, head + b"".join(pb.encode_bytes(7, _enc_blob(b, False)) for b in blobs)
    )


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
        chunks = [pb.encode_bytes(1, net_name.encode())] if net_name else []
        for name, params in layers:
            kind = (types or {}).get(name) or _default_type(params)
            chunks.append(_enc_layers(name, kind, params, legacy))
    except ValueError as e:
        raise FormatError(f"{path}: {e}") from None
    atomic_write_bytes(path, b"".join(chunks))
