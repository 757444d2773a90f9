"""Export a model to ONNX (carrying its preprocessing and labels) or TorchScript.

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

from ..errors import FormatError, SqueezeNetError
from ..io import atomic_write_bytes
from .fold import fold_batch_norm

OPSET = 17
INPUT, OUTPUT = "input", "logits"
FORMATS = ("onnx", "torchscript")


def input_shape(model: nn.Module, example: torch.Tensor | None = None) -> tuple[int, int, int]:
    """(C, H, W) the model is run at: the example's, else its preprocessing's crop."""
    if example is not None:
        return tuple(example.shape[1:])
    info = getattr(model, "weights_info", None)
    if info is None:
        raise SqueezeNetError("the model has no weights_info: pass example= (a batch) for its size")
    return (3, info.preprocess.crop, info.preprocess.crop)


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


def check_output(path: str | Path) -> Path:
    """``path`` as a Path, after checking that its folder exists (before any long work)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SqueezeNetError(f"{path}: folder {path.parent} does not exist")
    return path


def export(
    model: nn.Module, path: str | Path, file_format: str = "onnx", *, dynamic_batch: bool = False
) -> None:
    """Write ``model`` as ONNX (fixed batch 1 unless ``dynamic_batch``) or TorchScript.

    Both get the eval-mode model with its Fire BatchNorms folded into the convolutions.
    """
    path = check_output(path)
    if file_format == "onnx":
        data = onnx_model(model, dynamic_batch=dynamic_batch).SerializeToString()
    elif file_format == "torchscript":
        with torch.no_grad():
            scripted = torch.jit.trace(fold_batch_norm(model), torch.zeros(1, *input_shape(model)))
        extra = {"squeezenet.json": json.dumps(model.weights_info.to_meta())}
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer, _extra_files=extra)
        data = buffer.getvalue()
    else:
        raise SqueezeNetError(f"unknown export format {file_format!r}; choose from {FORMATS}")
    atomic_write_bytes(path, data)
