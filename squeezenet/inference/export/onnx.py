"""The ONNX target: the model as an ONNX graph carrying its preprocessing and labels.

An exported ONNX file stores the model's ``weights_info.to_meta()`` in ``metadata_props``, one
JSON-encoded value per key (``arch``, ``preprocess``, ``classes``, ...), so that it can be run
with the right preprocessing by ONNX Runtime alone (see ``backends.OnnxModel``).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ...errors import FormatError, SqueezeNetError
from ...io import atomic_write_bytes
from ..fold import fold_batch_norm
from . import input_shape

OPSET = 17
INPUT, OUTPUT = "input", "logits"
SUFFIXES = (".onnx",)


def onnx_model(
    model: nn.Module, example: torch.Tensor | None = None, *, dynamic_batch: bool = True
) -> onnx.ModelProto:
    """The model as an ONNX graph (input ``input``, output ``logits``) with its metadata.

    Uses the TorchScript-based exporter (``dynamo=False``), which needs no onnxscript. Fire
    BatchNorms are folded into the convolutions first (``fold.fold_batch_norm``).
    """
    model = fold_batch_norm(model)
    x = torch.zeros(1, *input_shape(model, example))
    buffer = io.BytesIO()
    axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning
        torch.onnx.export(
            model, (x,), buffer, dynamo=False, opset_version=OPSET,
            input_names=[INPUT], output_names=[OUTPUT], dynamic_axes=axes,
        )  # fmt: skip
    proto = onnx.load_from_string(buffer.getvalue())
    if hasattr(model, "weights_info"):
        set_meta(proto, model.weights_info.to_meta())
    return proto


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
