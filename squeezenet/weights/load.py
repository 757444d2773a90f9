"""Path or name -> reader -> arrays -> model, with the metadata that makes predictions right.

``load_model`` takes five steps: find the file (``detect.resolve``; known files are recognised
by SHA-256, see ``entries``), pick the reader (``formats.detect`` or the entry's format), read
(``Contents``: a state dict or layers, and what the file says of the model), build the model
(arch, keyword arguments and class count from the metadata, else inferred from the arrays),
and assign the weights: a state dict strictly by key, layers by position with every shape
checked (``layers.assign_layers``).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..data.transforms import get_preset
from ..errors import FormatError, SqueezeNetError
from ..models.registry import build_model
from . import formats, hub
from .build import assign, build, describe
from .detect import resolve, sha256_file
from .entries import WeightsEntry, entry_for_sha256
from .formats import Hints
from .info import WeightsInfo
from .save import save_model

__all__ = ["create_model", "load_model", "save_model"]


def load_model(
    spec: str | Path,
    *,
    file_format: str | None = None,
    prototxt: str | Path | None = None,
    preprocess: str | None = None,
) -> nn.Module:
    """Build whatever architecture a weights file or name holds and load it (eval mode).

    ``spec`` may also be a Hub-shaped folder (``config.json`` + ``model.safetensors``) or
    ``hf-hub:ORG/NAME[@REV]``. The returned module carries ``weights_info`` (arch,
    preprocessing, class names, origin).
    """
    config = None
    if str(spec).startswith(hub.PREFIX) or Path(spec).is_dir():
        folder = hub.fetch(str(spec)) if str(spec).startswith(hub.PREFIX) else Path(spec)
        config = hub.read_config(folder)
        spec = folder / hub.WEIGHTS
    path, entry = resolve(spec)
    try:
        return _load_model(path, entry, file_format, prototxt, preprocess, config)
    except SqueezeNetError as e:
        if str(path) in str(e) or (prototxt and str(prototxt) in str(e)):
            raise
        raise type(e)(f"{path}: {e}") from None


def _load_model(
    path: Path,
    entry: WeightsEntry | None,
    file_format: str | None,
    prototxt: str | Path | None,
    preprocess: str | None,
    config: dict | None = None,
) -> nn.Module:
    # 1. The file: a registered entry is checked (or recognised) by its SHA-256.
    digest = sha256_file(path)
    if entry is not None and not digest.startswith(entry.sha256):
        raise FormatError(f"{path}: SHA-256 {digest[:16]}... does not match {entry.name}")
    entry = entry or entry_for_sha256(digest)
    # 2. The reader.
    name = file_format or (entry.file_format if entry else None) or formats.detect(path)
    reader = formats.get(name)
    # 3. Read.
    contents = reader.load(path, Hints(prototxt=Path(prototxt) if prototxt else None))
    if contents.module is not None:  # a program that runs as it is: nothing to build
        meta = {**contents.meta, **({"preprocess": preprocess} if preprocess else {})}
        return _with_info(contents.module, meta, path, digest, name, entry)
    # 4. The model, as the file describes it; a registered entry and the caller have the last word.
    meta = describe(contents)
    if entry is not None:
        meta["arch"], meta["preprocess"] = entry.arch, entry.preprocess
        meta["model_kwargs"] = {**meta["model_kwargs"], **entry.model_kwargs}
    meta.update(config or {})  # a Hub folder's config.json says what its weights are
    if preprocess:
        meta["preprocess"] = preprocess
    model = build(meta)
    # 5. The weights.
    assign(model, contents, meta["arch"], str(path))
    return _with_info(model, meta, path, digest, name, entry)


def _with_info(
    model: nn.Module, meta: dict, path: Path, digest: str, name: str, entry: WeightsEntry | None
) -> nn.Module:
    """``model`` in eval mode with its ``weights_info`` (the metadata and where it came from)."""
    model.eval()
    model.weights_info = WeightsInfo.from_meta(
        meta,
        source=str(path),
        sha256=digest,
        file_format=name,
        entry=entry.name if entry else meta.get("entry"),
    )
    return model


def create_model(
    arch: str,
    *,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``arch`` in eval mode, optionally loading ``weights`` (a path or a name).

    With ``num_classes`` different from the weights', the classifier is replaced
    (``reset_classifier``) and the rest keeps the pretrained values.
    """
    if weights is None:
        model = build_model(arch, **({"num_classes": num_classes} if num_classes else {}), **kwargs)
        model.weights_info = WeightsInfo(  # a random model: no metadata, no class names
            arch, kwargs, model.num_classes, get_preset("torchvision"), file_format="random"
        )
        return model.eval()
    model = load_model(weights)
    info = model.weights_info
    if info.arch != arch:
        raise SqueezeNetError(f"{weights}: holds {info.arch} weights, not {arch}")
    if num_classes and num_classes != info.num_classes:
        model.reset_classifier(num_classes)
        info.num_classes, info.classes, info.class_ids = num_classes, None, None
    return model.eval()
