"""The ExecuTorch target: a .pte program whose network runs in the XNNPACK delegate.

The model is captured by ``torch.export`` with a batch dimension of 1 to ``MAX_BATCH`` (the
runtime plans its memory for the largest batch, so a bound keeps the arena small; larger
batches are run in slices), lowered with ``to_edge_transform_and_lower`` and the XNNPACK
partitioner. ``int8=True`` quantizes it first with PT2E: XNNPACK's quantizer, static, symmetric
per-channel int8 weights and int8 activations whose ranges come from real calibration images.

The model's ``weights_info.to_meta()`` travels inside the program as constant methods:
``weights_info`` returns it as a JSON string and ``max_batch`` the batch bound, so that the
file alone is enough to run it with the right preprocessing (``executorch_runtime``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ...errors import SqueezeNetError
from ...io import atomic_write_bytes
from ..fold import fold_batch_norm
from . import input_shape

SUFFIXES = (".pte",)
MAX_BATCH = 8
META_METHOD, BATCH_METHOD = "weights_info", "max_batch"
NUM_IMAGES = 200
CALIBRATION_BATCH = 10
_LOCK = threading.Lock()  # the fd-2 redirection is process-wide


@contextlib.contextmanager
def quiet_stderr() -> Iterator[list[str]]:
    """File descriptor 2 goes to a temporary file; the list gets its lines on exit."""
    lines: list[str] = []
    with _LOCK, tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()  # the runtime also logs through Python's logging to sys.stderr
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines += log.read().decode(errors="replace").splitlines()


def import_executorch():
    """The ``executorch.exir`` module, or a one-line error saying how to install it."""
    try:
        with quiet_stderr():  # torchao, imported by it, prints about its CUDA kernels there
            from executorch import exir
    except ImportError:
        raise SqueezeNetError(
            "ExecuTorch is not installed: pip install 'squeezenet[executorch]'"
        ) from None
    return exir


def _export(model: nn.Module, shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """``model`` captured with a batch dimension of 1 to ``MAX_BATCH``."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = torch.zeros(2, *shape)  # 2, not 1: torch.export specializes a size of 1
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def quantize_pt2e(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """The static int8 (PT2E, XNNPACK quantizer) version of ``model``, calibrated on ``images``."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(_export(model, tuple(images.shape[1:])).module(), quantizer)
    with torch.no_grad():
        for batch in images.split(CALIBRATION_BATCH):  # the observers record the ranges
            prepared(batch)
    return convert_pt2e(prepared)


def pte_program(
    model: nn.Module, example: torch.Tensor | None = None, *, int8: bool = False
) -> bytes:
    """The model as .pte bytes (XNNPACK delegate), with its metadata as constant methods.

    For ``int8``, ``example`` is the calibration data: real preprocessed images.
    """
    exir = import_executorch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's and exir's deprecation warnings
        return _program(exir, model, example, int8)


def _program(exir, model: nn.Module, example: torch.Tensor | None, int8: bool) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    model = fold_batch_norm(model)
    shape = input_shape(model, example)
    meta = model.weights_info.to_meta() if hasattr(model, "weights_info") else {}
    if int8:
        if example is None:
            raise SqueezeNetError("int8 ExecuTorch calibrates on real images: pass example=")
        model = quantize_pt2e(model, example)
        meta["quantization"] = (
            f"int8 PT2E (XNNPACK quantizer): static, per-channel symmetric weights, "
            f"calibrated on {len(example)} images"
        )
    constants = {META_METHOD: json.dumps(meta), BATCH_METHOD: MAX_BATCH}
    edge = exir.to_edge_transform_and_lower(
        _export(model, shape), partitioner=[XnnpackPartitioner()], constant_methods=constants
    )
    return edge.to_executorch().buffer


def write(
    model: nn.Module,
    path: Path,
    *,
    int8: bool = False,
    calibration: str | Path | None = None,
    num_images: int = NUM_IMAGES,
    progress: bool = True,
) -> None:
    """Write ``model`` as a .pte file; ``int8`` calibrates on up to ``num_images`` images of
    the folder ``calibration`` (never the images it is evaluated on)."""
    example = None
    if int8:
        if calibration is None:
            raise SqueezeNetError("int8 needs calibration images: pass calibration=DIR")
        from ..quantize import calibration_images

        preprocess = model.weights_info.preprocess
        example = calibration_images(calibration, preprocess, num_images, progress)
    elif calibration is not None:
        raise SqueezeNetError("calibration images are for int8 only: pass int8=True")
    atomic_write_bytes(path, pte_program(model, example, int8=int8))
