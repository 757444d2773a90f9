"""Weights of an ONNX graph (e.g. the ONNX model zoo's squeezenet1.0 / 1.1), in node order.

Each Conv, Gemm, MatMul (with a constant right operand) and BatchNormalization node gives one
layer; its arrays are found through the node's own inputs, so initializer names (``conv1_w_0``,
numeric ids, ...) and the initializer order do not matter. Gemm and MatMul weights come out as
PyTorch's (out, in). Layer names are node names, or ``f"{op}_{i}"`` for unnamed node i.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import FormatError
from . import Contents, Hints, Layers

SUFFIXES = (".onnx",)
WRITTEN_BY = "squeezenet export"  # a deploy target (squeezenet.inference.export), not weights

PARAMS = {
    "Conv": ("weight", "bias"),
    "Gemm": ("weight", "bias"),
    "MatMul": ("weight",),
    "BatchNormalization": ("weight", "bias", "running_mean", "running_var"),
}
"""Parameter names of each op's inputs after the first (the data)."""


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    tensors[node.output[0]] = attr.t
    return tensors


def _layer(node: onnx.NodeProto, name: str, tensors: dict) -> dict[str, np.ndarray] | None:
    inputs = list(node.input[1:])
    if node.op_type == "MatMul" and (not inputs or inputs[0] not in tensors):
        return None  # two activations multiplied: no weights
    params = {}
    for key, source in zip(PARAMS[node.op_type], inputs, strict=False):
        if not source:
            continue  # an omitted optional input
        if source not in tensors:
            raise ValueError(f"{node.op_type} {name!r}: {key} {source!r} is not an initializer")
        params[key] = np.array(numpy_helper.to_array(tensors[source]))
    if "weight" not in params:
        raise ValueError(f"{node.op_type} {name!r} has no weight")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul" or (node.op_type == "Gemm" and not attrs.get("transB", 0)):
        params["weight"] = np.ascontiguousarray(params["weight"].T)
    return params


def sniff(head: bytes) -> bool:
    return False  # a ModelProto has no magic bytes: the suffix decides


def load(path: Path, hints: Hints) -> Contents:
    """Layers in node order, with the metadata ``squeezenet export`` stores; for files from
    elsewhere, conv10's padding from the last Conv's ``pads`` (Caffe's v1.0 has 1)."""
    model = _load(path)
    meta = metadata(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    pads = [list(a.ints) for a in convs[-1].attribute if a.name == "pads"] if convs else []
    meta.setdefault("model_kwargs", {"classifier_padding": int(pads[0][0]) if pads else 0})
    meta.setdefault("preprocess", "torchvision")
    return Contents(layers=_layers(path, model), meta=meta)


def read(path: str | Path) -> Layers:
    """[(node name, {"weight", "bias", ...})] for every weighted node, in graph order."""
    return _layers(path, _load(path))


def _load(path: str | Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as e:  # the onnx/protobuf stack raises many kinds on bad bytes
        raise FormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None


def _layers(path: str | Path, model: onnx.ModelProto) -> Layers:
    tensors = _constants(model.graph)
    layers: Layers = []
    try:
        for i, node in enumerate(model.graph.node):
            if node.op_type not in PARAMS:
                continue
            name = node.name or f"{node.op_type}_{i}"
            params = _layer(node, name, tensors)
            if params is not None:
                layers.append((name, params))
    except (ValueError, TypeError) as e:  # to_array: data that disagrees with dims or type
        raise FormatError(f"{path}: {e}") from None
    if not any(node.op_type == "Conv" for node in model.graph.node):
        raise FormatError(f"{path}: no Conv node (not a SqueezeNet graph?)")
    return layers


def metadata(model: onnx.ModelProto) -> dict:
    """``metadata_props`` whose values are JSON (as ``squeezenet export`` writes arch,
    preprocessing and classes); other values are skipped."""
    meta = {}
    for prop in model.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            continue
    return meta
