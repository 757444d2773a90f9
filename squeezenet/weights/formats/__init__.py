"""One module per weights format, all with the same small interface, registered in ``FORMATS``.

Each ``formats/<name>.py`` has::

    SUFFIXES: tuple[str, ...]                        # file suffixes it claims, lower case
    def sniff(head: bytes) -> bool                   # its magic in the first HEAD_BYTES bytes
    def load(path: Path, hints: Hints) -> Contents   # read the file
    def save(path: Path, contents: Contents) -> None # only where the format can be written
    WRITTEN_BY: str                                  # optional, where it is not: the command
    def companion(path: Path) -> bool                # optional: a second file of the format's
                                                     # pair (ncnn's .bin), claimed last

``Contents`` holds either a state dict (``state``, loaded into the model strictly by key) or a
list of layers in data-flow order (``layers``, assigned to the model by position and shape)::

    Layers = list[tuple[str, dict[str, np.ndarray]]]
    # e.g. [("conv1", {"weight": (96, 3, 7, 7), "bias": (96,)}),
    #       ("fire2/squeeze1x1", {...}), ...,
    #       ("fire2/bn4", {"weight", "bias", "running_mean", "running_var"}), ...]

or, for a program that runs as it is (``pt2``), the module itself (``module``),
plus ``meta``: what the file says about the model, in ``WeightsInfo.to_meta`` keys (``arch``,
``model_kwargs``, ``num_classes``, ``preprocess`` as a dict or a preset name, ``classes``...).
The loader (``squeezenet.weights.load``) infers what is missing from the arrays. Parameter names
follow PyTorch (weight, bias, running_mean, running_var); layer names are the format's own.
Nothing here builds models. Every reader raises ``squeezenet.errors.FormatError`` with a
message naming the file and what is wrong; none returns a partial result.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
from torch import nn

from ...errors import FormatError

Layers = list[tuple[str, dict[str, np.ndarray]]]

FORMATS = (
    "sqz",
    "safetensors",
    "ncnn",
    "deep_compression",
    "caffe",
    "onnx",
    "pt2",
    "torchvision",
    "chainer",
)
"""Every format, in the order ``detect`` tries them: a format claims a file by its suffix or
its magic bytes, the first to claim it wins."""

DEFAULT_WRITER = "safetensors"  # the only format that keeps all the metadata
HEAD_BYTES = 512  # enough for a zip's first member name (torch.save's data.pkl)


@dataclass
class Hints:
    """What the caller knows beyond the file: a Caffe prototxt (shapes and paddings)."""

    prototxt: Path | None = None


@dataclass
class Contents:
    """What a weights file holds: a state dict or layers, and metadata (see the module doc)."""

    state: dict[str, np.ndarray] | None = None
    layers: Layers | None = None
    meta: dict = field(default_factory=dict)
    module: nn.Module | None = None  # a program that runs as it is (.pt2): nothing to build


def get(name: str) -> ModuleType:
    """The module of format ``name`` (imported on first use: onnx is slow to import)."""
    if name not in FORMATS:
        raise FormatError(f"unsupported format {name!r}; choose from {', '.join(FORMATS)}")
    return importlib.import_module(f"{__name__}.{name}")


def detect(path: Path) -> str:
    """The first format (in ``FORMATS`` order) that claims the file by suffix or magic."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    suffix = path.suffix.lower()
    for name in FORMATS:
        module = get(name)
        if suffix in module.SUFFIXES or module.sniff(head):
            return name
    for name in FORMATS:  # its reader says which file to pass instead
        if getattr(get(name), "companion", lambda p: False)(path):
            return name
    raise FormatError(
        f"{path}: cannot tell the weights format from its name or first bytes; "
        f"pass --format ({', '.join(FORMATS)})"
    )


def writable_suffixes() -> list[str]:
    """Every suffix ``writer`` accepts, the default format's first."""
    names = [DEFAULT_WRITER] + [n for n in FORMATS if n != DEFAULT_WRITER]
    return [s for n in names if hasattr(get(n), "save") for s in get(n).SUFFIXES]


def writer(path: Path) -> ModuleType:
    """The writable format whose suffix ``path`` has.

    Any other suffix is refused: one only read here says which command writes it (a format's
    ``WRITTEN_BY``), an unknown one lists the writable suffixes.
    """
    suffix = path.suffix.lower()
    for name in FORMATS:
        module = get(name)
        if suffix in module.SUFFIXES:
            if hasattr(module, "save"):
                return module
            by = getattr(module, "WRITTEN_BY", None)
            how = f"'{by}' writes it" if by else "nothing here writes it"
            raise FormatError(
                f"{path}: a {suffix} ({name}) is read, not written, as weights: {how}; "
                f"write {', '.join(writable_suffixes())}"
            )
    what = f"unknown suffix {suffix!r}" if suffix else "no suffix"
    raise FormatError(f"{path}: {what}; weights are written as {', '.join(writable_suffixes())}")
