"""Deploy targets: one module per target behind one interface, registered in ``TARGETS``.

Each ``export/<name>.py`` has::

    SUFFIXES: tuple[str, ...]                             # what its files are called
    def write(model: nn.Module, path: Path, **options)    # the file(s), written atomically

A target writes the eval-mode model with its Fire BatchNorms folded into the convolutions and
carries ``weights_info`` (arch, classes, preprocessing, source) where its format has room.
Tests run every file a target writes with that target's own runtime.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ...errors import SqueezeNetError

TARGETS = ("onnx", "pt2", "executorch", "ncnn", "web")


def input_shape(model: nn.Module, example: torch.Tensor | None = None) -> tuple[int, int, int]:
    """(C, H, W) the model is run at: the example's, else its preprocessing's crop."""
    if example is not None:
        return tuple(example.shape[1:])
    info = getattr(model, "weights_info", None)
    if info is None:
        raise SqueezeNetError("the model has no weights_info: pass example= (a batch) for its size")
    return (3, info.preprocess.crop, info.preprocess.crop)


def check_output(path: str | Path) -> Path:
    """``path`` as a Path, after checking that its folder exists (before any long work)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SqueezeNetError(f"{path}: folder {path.parent} does not exist")
    return path


def target(name: str) -> ModuleType:
    """The module of deploy target ``name`` (imported on first use)."""
    if name not in TARGETS:
        raise SqueezeNetError(f"unknown export format {name!r}; choose from {', '.join(TARGETS)}")
    return importlib.import_module(f"{__name__}.{name}")


def export(model: nn.Module, path: str | Path, file_format: str = "onnx", **options) -> None:
    """Write ``model`` for deploy target ``file_format`` (see ``TARGETS``)."""
    target(file_format).write(model, check_output(path), **options)
