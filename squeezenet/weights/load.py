"""Path or name -> format -> arrays -> model, with the metadata that makes predictions right.

Known files are recognised by SHA-256 (``entries``), others by ``detect``. Foreign formats give
layers in data-flow order that ``layers`` assigns to the model's parameters by position, with
every shape checked; a state dict (torchvision, safetensors) is loaded strictly by key.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data.transforms import Preprocess, get_preset
from ..errors import FormatError, SqueezeNetError
from ..models.registry import build_model
from .detect import FORMATS, detect_format, resolve, sha256_file
from .entries import WeightsEntry, entry_for_sha256
from .formats import Layers
from .info import WeightsInfo
from .layers import arch_of_layers, arch_of_state, assign_layers, model_layers


def _read_foreign(
    path: Path, fmt: str, prototxt: Path | None
) -> tuple[Layers, str, dict, str, dict]:
    """Read a foreign format; return (layers, arch, model kwargs, preset name, metadata)."""
    if fmt == "deep_compression":
        from .formats import deep_compression

        shapes, pad = _caffe_shapes(prototxt)
        return (
            deep_compression.read(path, shapes),
            "squeezenet1_0",
            {"classifier_padding": pad},
            "caffe",
            {},
        )
    if fmt == "ncnn":
        from .formats import ncnn

        layers = ncnn.read(path)
        convs = [layer for layer in ncnn.read_param(path) if layer.type == "Convolution"]
        arch, _ = arch_of_layers(layers)
        pad = int(convs[-1].params.get(4, 0))
        return layers, arch, {"classifier_padding": pad}, "torchvision", {}
    if fmt == "caffe":
        from .formats import caffe

        layers = caffe.read_caffemodel(path)
        arch, _ = arch_of_layers(layers)
        pad = 1 if arch == "squeezenet1_0" else 0
        if prototxt is not None:
            pad = _caffe_shapes(prototxt)[1]
        return layers, arch, {"classifier_padding": pad}, "caffe", {}
    if fmt == "chainer":
        from .formats import chainer

        return chainer.read(path), "squeezenet1_0_chainer", {}, "caffe", {}
    if fmt == "onnx":
        from .formats import onnx as onnx_format

        layers = onnx_format.read(path)
        arch, _ = arch_of_layers(layers)
        pad, meta = _onnx_pad_and_metadata(path)
        # files written by `squeezenet export` record what they hold
        kwargs = meta.get("model_kwargs", {"classifier_padding": pad})
        return layers, meta.get("arch", arch), kwargs, "torchvision", meta
    raise FormatError(f"{path}: unsupported format {fmt!r}; choose from {', '.join(FORMATS)}")


def _caffe_shapes(prototxt: Path | None) -> tuple[list[tuple[str, tuple[int, ...]]], int]:
    """Conv shapes and conv10's pad, from a prototxt or from squeezenet1_0 itself."""
    if prototxt is not None:
        from .formats import caffe

        try:
            specs = caffe.conv_specs(caffe.read_prototxt(prototxt))
        except FormatError as e:
            raise FormatError(f"{prototxt}: {str(e).removeprefix('prototxt: ')}") from None
        if not specs:
            raise FormatError(f"{prototxt}: no Convolution layers")
        return [(spec.name, spec.shape) for spec in specs], specs[-1].pad[0]
    model = build_model("squeezenet1_0")
    shapes = [
        (name, tuple(m.weight.shape))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    return shapes, 1


def _onnx_pad_and_metadata(path: Path) -> tuple[int, dict]:
    """The last Conv's padding (Caffe's conv10 pad 1) and the file's JSON metadata."""
    import onnx

    from .formats.onnx import metadata

    model = onnx.load(str(path), load_external_data=False)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    pads = [list(a.ints) for a in convs[-1].attribute if a.name == "pads"]
    return (int(pads[0][0]) if pads else 0), metadata(model)


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
    digest = sha256_file(path)
    if entry is not None and not digest.startswith(entry.sha256):
        raise FormatError(f"{path}: SHA-256 {digest[:16]}... does not match {entry.name}")
    entry = entry or entry_for_sha256(digest)
    fmt = file_format or (entry.file_format if entry else None) or detect_format(path)
    meta: dict = {}
    if fmt == "safetensors":
        from .formats import safetensors

        arrays, meta = safetensors.read(path)
        state = {k: torch.from_numpy(v) for k, v in arrays.items()}
        if meta.get("arch"):
            arch, kwargs, num_classes = (
                meta["arch"],
                meta.get("model_kwargs", {}),
                meta["num_classes"],
            )
        else:
            arch, kwargs, num_classes = arch_of_state(arrays)
        preset = Preprocess.from_dict(meta["preprocess"]) if "preprocess" in meta else None
    elif fmt == "torchvision":
        from .formats import torchvision

        arrays = torchvision.read(path)
        try:
            arch, kwargs, num_classes = arch_of_state(arrays)
        except FormatError as e:
            raise FormatError(f"{path}: {e}") from None
        state = {k: torch.from_numpy(v) for k, v in arrays.items()}
        preset = get_preset("torchvision")
    elif fmt == "sqz":
        from ..compress import container

        arrays, meta = container.read(path)
        state = {k: torch.from_numpy(v) for k, v in arrays.items()}
        arch, kwargs, num_classes = meta["arch"], meta.get("model_kwargs", {}), meta["num_classes"]
        preset = Preprocess.from_dict(meta["preprocess"])
    else:
        layers, arch, kwargs, preset_name, meta = _read_foreign(
            path, fmt, prototxt and Path(prototxt)
        )
        num_classes = int(layers[-1][1]["weight"].shape[0])
        preset = (
            Preprocess.from_dict(meta["preprocess"])
            if "preprocess" in meta
            else get_preset(preset_name)
        )
        state = None
    if entry is not None:
        arch, preset = entry.arch, get_preset(entry.preprocess)
        kwargs = {**kwargs, **entry.model_kwargs}
    if preprocess:
        preset = get_preset(preprocess)
    model = build_model(arch, num_classes=num_classes, **kwargs)
    if state is None:
        state = assign_layers(model, layers, str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:2]
        raise FormatError(f"{path}: weights do not fit {arch}: {' '.join(first)}") from None
    model.eval()
    model.weights_info = WeightsInfo.from_meta(
        meta,
        arch=arch,
        model_kwargs=kwargs,
        num_classes=num_classes,
        preprocess=preset,
        source=str(path),
        sha256=digest,
        file_format=fmt,
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


SAVE_FORMATS = {".safetensors": "safetensors", ".pth": "torchvision", ".pt": "torchvision",
                ".caffemodel": "caffe", ".npz": "chainer"}  # fmt: skip


def save_model(model: nn.Module, path: str | Path, **overrides) -> None:
    """Write ``model``; the suffix picks the format (default: safetensors + metadata).

    ``.caffemodel`` and ``.npz`` (the old Chainer layout) take their layers by position;
    ``.pth`` is a torchvision-style state dict. Only safetensors keeps the metadata.
    """
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower(), "safetensors")
    if fmt == "caffe":
        from .formats import caffe

        caffe.write_caffemodel(path, model_layers(model))
    elif fmt == "chainer":
        from .formats import chainer

        chainer.write(path, model_layers(model))
    else:
        arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        if fmt == "torchvision":
            from .formats import torchvision

            torchvision.write(path, arrays)
        else:
            from .formats import safetensors

            meta = model.weights_info.to_meta() if hasattr(model, "weights_info") else {}
            safetensors.write(path, arrays, {**meta, **overrides})
