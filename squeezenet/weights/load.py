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

import torch
from torch import nn

from ..data.transforms import get_preset
from ..errors import FormatError, SqueezeNetError
from ..models.registry import build_model
from . import formats
from .detect import resolve, sha256_file
from .entries import WeightsEntry, entry_for_sha256
from .formats import Contents, Hints
from .info import WeightsInfo
from .layers import arch_of_layers, arch_of_state, assign_layers, model_layers


def load_model(
    spec: str | Path,
    *,
    file_format: str | None = None,
    prototxt: str | Path | None = None,
    preprocess: str | None = None,
) -> nn.Module:
    """Build whatever architecture a weights file or name holds and load it (eval mode).

    The returned module carries ``weights_info`` (arch, preprocessing, class names, origin).
    """
    path, entry = resolve(spec)
    try:
        return _load_model(path, entry, file_format, prototxt, preprocess)
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
    # 4. The model, as the file describes it; a registered entry and the caller have the last word.
    meta = _describe(contents)
    if entry is not None:
        meta["arch"], meta["preprocess"] = entry.arch, entry.preprocess
        meta["model_kwargs"] = {**meta["model_kwargs"], **entry.model_kwargs}
    if preprocess:
        meta["preprocess"] = preprocess
    try:
        model = build_model(meta["arch"], num_classes=meta["num_classes"], **meta["model_kwargs"])
    except (TypeError, ValueError) as e:  # metadata naming options the builder does not have
        raise FormatError(f"{path}: metadata describes no buildable {meta['arch']} ({e})") from None
    # 5. The weights.
    if contents.state is not None:
        state = {k: torch.from_numpy(v) for k, v in contents.state.items()}
    else:
        state = assign_layers(model, contents.layers, str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:2]
        raise FormatError(f"{path}: weights do not fit {meta['arch']}: {' '.join(first)}") from None
    model.eval()
    model.weights_info = WeightsInfo.from_meta(
        meta,
        source=str(path),
        sha256=digest,
        file_format=name,
        entry=entry.name if entry else meta.get("entry"),
    )
    return model


def _describe(contents: Contents) -> dict:
    """The file's metadata with arch, model_kwargs and num_classes filled in from the arrays."""
    meta = dict(contents.meta)
    if contents.state is not None:
        if not meta.get("arch"):
            arch, kwargs, num_classes = arch_of_state(contents.state)
            meta.update(arch=arch, model_kwargs=kwargs, num_classes=num_classes)
    else:
        if not meta.get("arch"):  # only then: arch_of_layers knows SqueezeNets alone
            meta["arch"] = arch_of_layers(contents.layers)[0]
        meta["num_classes"] = int(contents.layers[-1][1]["weight"].shape[0])
    meta["model_kwargs"] = dict(meta.get("model_kwargs") or {})
    return meta


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


def save_model(model: nn.Module, path: str | Path, **overrides) -> None:
    """Write ``model``; the suffix picks the format (default: safetensors + metadata).

    ``.caffemodel`` and ``.npz`` (the old Chainer layout) take their layers by position;
    ``.pth`` is a torchvision-style state dict. Only safetensors keeps the metadata.
    """
    path = Path(path)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    meta = model.weights_info.to_meta() if hasattr(model, "weights_info") else {}
    contents = Contents(state=state, layers=model_layers(model), meta={**meta, **overrides})
    formats.writer(path).save(path, contents)
