"""Path or name -> format -> arrays -> model, with the metadata that makes predictions right.

Formats are detected by SHA-256 first (known files), then by magic bytes and extension. Foreign
formats give layers in data-flow order that are assigned to the model's parameters by position,
with every shape checked; a state dict (torchvision, safetensors) is loaded strictly by key.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.datasets import imagenet_classes, squeezenet_home
from ..data.transforms import Preprocess, get_preset
from ..errors import FormatError, SqueezeNetError
from ..models.registry import build_model
from .entries import ENTRIES, WeightsEntry, entry_for_sha256
from .formats import Layers

FORMATS = (
    "safetensors",
    "torchvision",
    "deep_compression",
    "ncnn",
    "caffe",
    "chainer",
    "onnx",
    "sqz",
)


@dataclass
class WeightsInfo:
    """What a loaded model needs to classify correctly: arch, preprocessing, labels, origin."""

    arch: str
    model_kwargs: dict
    num_classes: int
    preprocess: Preprocess
    classes: list[str] | None = None  # human-readable names, one per output
    class_ids: list[str] | None = None  # wnids or folder names, for ImageFolder mapping
    source: str = ""
    sha256: str = ""
    file_format: str = ""
    entry: str | None = None
    extra: dict = field(default_factory=dict)

    def label(self, index: int) -> str:
        return self.classes[index] if self.classes else f"class {index}"

    def to_meta(self) -> dict:
        return {
            "arch": self.arch,
            "model_kwargs": self.model_kwargs,
            "num_classes": self.num_classes,
            "preprocess": self.preprocess.to_dict(),
            "classes": self.classes,
            "class_ids": self.class_ids,
            "source": self.source,
            "sha256": self.sha256,
            "file_format": self.file_format,
            "entry": self.entry,
        }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(spec: str | Path) -> tuple[Path, WeightsEntry | None]:
    """A path, or a registered name looked up in the cache ($SQUEEZENET_HOME)."""
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            raise SqueezeNetError(f"{path}: is a folder; pass a weights file")
        return path, None
    if str(spec) in ENTRIES:
        entry = ENTRIES[str(spec)]
        cached = squeezenet_home() / entry.filename
        if not cached.exists():
            raise SqueezeNetError(
                f"weights {entry.name!r} are not in the cache {cached.parent}: run "
                f"'squeezenet download {entry.name}' (from {entry.url}) or pass --weights PATH"
            )
        return cached, entry
    raise SqueezeNetError(
        f"{spec}: no such file, and not a known weights name ({', '.join(sorted(ENTRIES))})"
    )


def detect_format(path: Path) -> str:
    """Guess the format from magic bytes and the file name."""
    with open(path, "rb") as f:
        head = f.read(16)
    suffix = path.suffix.lower()
    if head[:4] == b"SQZ\x00" or suffix == ".sqz":
        return "sqz"
    if suffix == ".safetensors" or (len(head) > 9 and head[8:9] == b"{"):
        return "safetensors"
    if suffix == ".param" or head.startswith(b"7767517"):
        return "ncnn"
    if suffix == ".net":
        return "deep_compression"
    if suffix == ".caffemodel":
        return "caffe"
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".npz":
        return "chainer"
    if head[:1] == b"\x80" or suffix in (".pth", ".pt"):
        return "torchvision"
    if head[:2] == b"PK":  # a zip: torch.save (has data.pkl) or an npz
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            raise FormatError(f"{path}: damaged zip archive") from None
        return "torchvision" if any(n.endswith("data.pkl") for n in names) else "chainer"
    raise FormatError(
        f"{path}: cannot tell the weights format from its name or first bytes; "
        f"pass --format ({', '.join(FORMATS)})"
    )


def _arch_of_state(state: dict[str, np.ndarray]) -> tuple[str, dict, int]:
    """Infer (arch, model kwargs, num_classes) from a torchvision-style state dict."""
    first = state.get("features.0.weight")
    if first is None:
        raise FormatError("state dict has no 'features.0.weight': not a model of this package")
    if "classifier.6.weight" in state:  # AlexNet-style fully connected head
        arch = "zfnet" if first.shape[-1] == 7 else "alexnet"
        return arch, {}, int(state["classifier.6.weight"].shape[0])
    arch = "squeezenet1_0" if first.shape[-1] == 7 else "squeezenet1_1"
    kwargs: dict = {"dense_head": "fc.weight" in state}
    if any(k.endswith(".bn.weight") for k in state):
        arch += "_bn"
    if any(k.endswith(".bypass.weight") for k in state):
        kwargs["bypass"] = "complex"  # a simple (identity) bypass leaves no trace in the keys
    head = state["fc.weight"] if kwargs["dense_head"] else state["classifier.1.weight"]
    return arch, kwargs, int(head.shape[0])


def _arch_of_layers(layers: Layers) -> tuple[str, int]:
    """Infer (arch, num_classes) from layers in data-flow order."""
    first = layers[0][1]["weight"]
    if first.shape[0] == 96 and first.shape[-1] == 7:
        arch = "squeezenet1_0"
    elif first.shape[0] == 64 and first.shape[-1] == 3:
        arch = "squeezenet1_1"
    else:
        raise FormatError(f"first layer of shape {first.shape} matches no SqueezeNet version")
    return arch, int(layers[-1][1]["weight"].shape[0])


def assign_layers(model: nn.Module, layers: Layers, source: str) -> dict[str, torch.Tensor]:
    """Map layers in data-flow order onto the model's parametrised modules, checking shapes."""
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d)
    ]
    if len(targets) != len(layers):
        raise FormatError(
            f"{source}: holds {len(layers)} layers but {type(model).__name__} has {len(targets)}"
        )
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for (module_name, _), (layer_name, params) in zip(targets, layers, strict=True):
        for pname, array in params.items():
            key = f"{module_name}.{pname}"
            if key not in expected:
                raise FormatError(f"{source}: layer {layer_name!r} has {pname!r}, {key} does not")
            tensor = torch.from_numpy(np.array(array, copy=True))
            if key.endswith("num_batches_tracked"):
                tensor = tensor.reshape(()).to(torch.long)
            elif tuple(tensor.shape) != tuple(expected[key].shape):
                if tensor.numel() == expected[key].numel() and tensor.ndim != expected[key].ndim:
                    tensor = tensor.reshape(expected[key].shape)  # e.g. Caffe's 4-d fc blobs
                else:
                    raise FormatError(
                        f"{source}: layer {layer_name!r} {pname} has shape {tuple(tensor.shape)}, "
                        f"expected {tuple(expected[key].shape)} for {key}"
                    )
            state[key] = tensor.to(expected[key].dtype)
    for key, value in expected.items():  # e.g. num_batches_tracked absent from the file
        state.setdefault(key, value)
    return state


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
        arch, _ = _arch_of_layers(layers)
        pad = int(convs[-1].params.get(4, 0))
        return layers, arch, {"classifier_padding": pad}, "torchvision", {}
    if fmt == "caffe":
        from .formats import caffe

        layers = caffe.read_caffemodel(path)
        arch, _ = _arch_of_layers(layers)
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
        arch, _ = _arch_of_layers(layers)
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
            arch, kwargs, num_classes = _arch_of_state(arrays)
        preset = Preprocess.from_dict(meta["preprocess"]) if "preprocess" in meta else None
    elif fmt == "torchvision":
        from .formats import torchvision

        arrays = torchvision.read(path)
        try:
            arch, kwargs, num_classes = _arch_of_state(arrays)
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
    classes, class_ids = meta.get("classes"), meta.get("class_ids")
    if classes is None and num_classes == 1000:
        found = imagenet_classes()
        if found:
            class_ids, classes = found
    model.weights_info = WeightsInfo(
        arch=arch,
        model_kwargs=kwargs,
        num_classes=num_classes,
        preprocess=preset,
        classes=classes,
        class_ids=class_ids,
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
        model.weights_info = WeightsInfo(
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


def model_layers(model: nn.Module) -> Layers:
    """The inverse of ``assign_layers``: the model's parametrised modules in data-flow order."""
    layers: Layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
            params = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
            params.pop("num_batches_tracked", None)
            layers.append((name, params))
    return layers


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
