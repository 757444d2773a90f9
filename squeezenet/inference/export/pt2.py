"""The torch.export target: an ``ExportedProgram`` (.pt2) with any batch size.

The file is what ``torch.export.save`` writes, so ``torch.export.load(path).module()`` runs it
anywhere PyTorch is installed; it carries ``weights_info.to_meta()`` as the extra file
``squeezenet.json`` (read back by ``load_model``, see ``weights/formats/pt2.py``). No sample
inputs are stored: they would add a pickled batch to the file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from ...io import atomic_write_bytes
from ...weights.formats.pt2 import META_FILE, ExportedModel
from ..fold import fold_batch_norm
from . import input_shape

SUFFIXES = (".pt2",)


def exported_program(
    model: nn.Module, example: torch.Tensor | None = None, *, dynamic_batch: bool = True
) -> torch.export.ExportedProgram:
    """The eval-mode model, Fire BatchNorms folded, as a program (any batch, or batch 1).

    A loaded .pt2 (``ExportedModel``) gives its own program. A dynamic batch is traced at 2:
    torch.export specializes a dimension traced at size 1.
    """
    if isinstance(model, ExportedModel):
        return model.program
    model = fold_batch_norm(model)
    x = torch.zeros(2 if dynamic_batch else 1, *input_shape(model, example))
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=shapes)
    program.example_inputs = None
    return program


def write(model: nn.Module, path: Path) -> None:
    """Write ``model`` as a .pt2 program (any batch size) carrying its metadata."""
    meta = model.weights_info.to_meta() if hasattr(model, "weights_info") else {}
    buffer = io.BytesIO()
    extra = {META_FILE: json.dumps(meta)} if meta else None
    torch.export.save(exported_program(model), buffer, extra_files=extra)
    atomic_write_bytes(path, buffer.getvalue())
