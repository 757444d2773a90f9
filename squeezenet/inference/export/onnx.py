"""The ONNX target: the model as an ONNX graph carrying its preprocessing and labels.

An exported ONNX file stores the model's ``weights_info.to_meta()`` in ``metadata_props``, one
JSON-encoded value per key (``arch``, ``preprocess``, ``classes``, ...), so that it can be run
with the right preprocessing by ONNX Runtime alone (see ``backends.OnnxModel``).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ...data.datasets import squeezenet_home
from ...errors import FormatError, SqueezeNetError
from ...io import atomic_write_bytes
from ...weights.formats.pt2 import quiet_logger
from . import input_shape
from .pt2 import exported_program

# The exporter translates at opset 18 and converts the graph to any other version afterwards; at
# 18 nothing is converted. ONNX Runtime runs it since 1.14; its int8 QDQ quantizer needs 13.
OPSET = 18
INPUT, OUTPUT = "input", "logits"
SUFFIXES = (".onnx",)


def onnx_model(
    model: nn.Module, example: torch.Tensor | None = None, *, dynamic_batch: bool = True
) -> onnx.ModelProto:
    """The model as an ONNX graph (input ``input``, output ``logits``) with its metadata.

    The torch.export program of the pt2 target (Fire BatchNorms folded) is translated by the
    torch.export-based exporter (onnxscript). Each node's debug metadata (stack traces with
    this machine's paths, FX node names) is dropped: it only made the file larger.
    """
    cached = _cache_path(model, example, dynamic_batch)
    if cached is None:
        proto = _translate(model, example, dynamic_batch)
    elif cached.is_file():
        try:
            proto = onnx.load(str(cached))
        except Exception:  # a damaged cache entry is made again
            proto = _translate(model, example, dynamic_batch)
    else:
        proto = _translate(model, example, dynamic_batch)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cached, proto.SerializeToString())
        except (OSError, SqueezeNetError):  # no room or no right to cache: export every time
            pass
    if hasattr(model, "weights_info"):
        set_meta(proto, model.weights_info.to_meta())
    return proto


def _cache_path(model: nn.Module, example: torch.Tensor | None, dynamic_batch: bool) -> Path | None:
    """Where the graph of exactly this network is kept: the exporter takes seconds, loading it
    milliseconds. The key covers every tensor, the module's structure, the input shape and the
    versions that shape the graph, so a changed model never finds a stale graph."""
    key = hashlib.sha256(repr(model).encode())
    key.update(
        f"{input_shape(model, example)} {dynamic_batch} {OPSET} {torch.__version__}".encode()
    )
    for name, tensor in model.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return squeezenet_home() / "onnx" / f"{key.hexdigest()[:32]}.onnx"


def _translate(model: nn.Module, example: torch.Tensor | None, dynamic_batch: bool):
    """The graph, without metadata, from the torch.export-based exporter."""
    program = exported_program(model, example, dynamic_batch=dynamic_batch)
    with quiet_logger("torch.onnx"), torch.no_grad(), warnings.catch_warnings():
        # torch's own deepcopy of the program warns about its LeafSpec use on every export
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        exported = torch.onnx.export(
            program, dynamo=True, opset_version=OPSET, input_names=[INPUT],
            output_names=[OUTPUT], verbose=False,
        )  # fmt: skip
    proto = exported.model_proto
    graph = proto.graph
    for item in (*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer):
        del item.metadata_props[:]
    _name_batch(graph)
    return proto


def _name_batch(graph: onnx.GraphProto) -> None:
    """Call the dynamic batch dimension ``batch`` (torch.export names it after a symbol)."""
    symbol = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if symbol:
        for value in (*graph.input, *graph.output, *graph.value_info):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param == symbol:
                    dim.dim_param = "batch"


def set_meta(proto: onnx.ModelProto, meta: dict) -> None:
    """Store ``meta`` in ``metadata_props``, each value JSON-encoded."""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in meta.items()})


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file; a file that is not one raises FormatError naming it."""
    try:
        return onnx.load(str(path))
    except FileNotFoundError:
        raise SqueezeNetError(f"{path}: no such file") from None
    except Exception as e:  # protobuf raises several types on bytes that are not ONNX
        raise FormatError(f"{path}: not an ONNX model ({type(e).__name__})") from None


def write(model: nn.Module, path: Path, *, dynamic_batch: bool = False) -> None:
    """Write ``model`` as ONNX (batch 1 unless ``dynamic_batch``), Fire BatchNorms folded."""
    atomic_write_bytes(path, onnx_model(model, dynamic_batch=dynamic_batch).SerializeToString())
