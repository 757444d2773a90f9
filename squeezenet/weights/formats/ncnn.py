"""ncnn models: a ``.param`` text graph plus a ``.bin`` of weights in ``.param`` layer order.

``.param``: the magic line ``7767517``, ``layer_count blob_count``, then one line per layer:
``Type Name n_in n_out in_blobs... out_blobs... k=v ...``. A key of -23300 - id holds an
array ``n,v1,...,vn`` for param ``id``. Values with ``.``, ``e`` or ``E`` are floats.

``.bin``: per Convolution (or InnerProduct) layer a little-endian uint32 tag, the weights
(float16 for 0x01306B47, padded to 4 bytes; float32 for 0), then float32 biases, untagged.

``NAME.param.json`` (written by ``squeezenet export --format ncnn``), when present beside the
``.param``, holds the model's metadata (``WeightsInfo.to_meta()``: arch, classes,
preprocessing) and under ``"ncnn"`` the blob names and where BatchNorms were folded into the
convolutions; identity BatchNorms are put back there, so the file loads as its own arch.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import FormatError
from ..info import WeightsInfo
from . import Contents, Hints, Layers

MAGIC = "7767517"
SUFFIXES = (".param",)
SIDECAR_SUFFIX = ".json"  # NAME.param.json
SIDECAR_KEY = "ncnn"  # the sidecar's own entries, beside WeightsInfo.to_meta()'s
INPUT_BLOB, OUTPUT_BLOB = "input", "logits"  # the blobs of files this package writes
TAG_FLOAT16 = 0x01306B47
TAG_FLOAT32 = 0x00000000
TAG_INT8 = 0x000D4B38
ARRAY_KEY_BASE = -23300

# Layer types whose weights live in the .bin but whose layout this reader does not handle.
UNSUPPORTED = {
    "BatchNorm", "Bias", "Convolution1D", "Convolution3D", "ConvolutionDepthWise",
    "ConvolutionDepthWise1D", "ConvolutionDepthWise3D", "Deconvolution", "Deconvolution1D",
    "Deconvolution3D", "DeconvolutionDepthWise", "DeconvolutionDepthWise1D",
    "DeconvolutionDepthWise3D", "Embed", "GRU", "GroupNorm", "InstanceNorm", "LSTM",
    "LayerNorm", "MemoryData", "MultiHeadAttention", "Normalize", "PReLU", "RNN", "Scale",
}  # fmt: skip


@dataclass
class NcnnLayer:
    """One ``.param`` line."""

    type: str
    name: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    params: dict[int, int | float | list] = field(default_factory=dict)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _parse_params(tokens: list[str]) -> dict[int, int | float | list]:
    params: dict[int, int | float | list] = {}
    for token in tokens:
        key_text, sep, value = token.partition("=")
        key = int(key_text)
        if not sep or not value:
            raise ValueError(f"'{token}' is not key=value")
        if key <= ARRAY_KEY_BASE:
            count, *items = value.split(",")
            if int(count) != len(items):
                raise ValueError(f"array '{token}' announces {count} items, has {len(items)}")
            params[ARRAY_KEY_BASE - key] = [_number(item) for item in items]
        else:
            params[key] = _number(value)
    return params


def read_param(path: str | Path) -> list[NcnnLayer]:
    """Parse a ``.param`` file, checking the magic, the counts and every line."""
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not a text file") from None
    numbered = [(n, line.split()) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered or numbered[0][1] != [MAGIC]:
        raise FormatError(f"{path}: not an ncnn .param file (first line is not {MAGIC})")
    try:
        layer_count, blob_count = (int(t) for t in numbered[1][1])
    except (IndexError, ValueError):
        raise FormatError(
            f"{path}: the line after the magic is not 'layer_count blob_count'"
        ) from None
    if len(numbered) - 2 != layer_count:
        raise FormatError(f"{path}: header says {layer_count} layers, found {len(numbered) - 2}")
    layers = []
    for n, tokens in numbered[2:]:
        try:
            n_in, n_out = int(tokens[2]), int(tokens[3])
            blobs = tokens[4 : 4 + n_in + n_out]
            if n_in < 0 or n_out < 0 or len(blobs) != n_in + n_out:
                raise ValueError(f"expected {n_in} input and {n_out} output blob names")
            params = _parse_params(tokens[4 + n_in + n_out :])
        except (IndexError, ValueError) as e:
            raise FormatError(f"{path}: line {n}: malformed layer line ({e})") from None
        layers.append(NcnnLayer(tokens[0], tokens[1], blobs[:n_in], blobs[n_in:], params))
    blobs = {b for layer in layers for b in layer.inputs + layer.outputs}
    if len(blobs) != blob_count:
        raise FormatError(f"{path}: header says {blob_count} blobs, found {len(blobs)}")
    return layers


def _data_flow_order(path: Path, layers: list[NcnnLayer]) -> list[int]:
    """Layer indices in post-order from the graph outputs, each layer's inputs in order.

    So the branches feeding a Concat come in the Concat's input order, as a PyTorch module
    registers them (squeeze, expand1x1, expand3x3), whatever order the file lists them in.
    """
    producer: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for blob in layer.outputs:
            if blob in producer:
                raise FormatError(f"{path}: blob {blob} is produced by two layers")
            producer[blob] = i
    consumed = {blob for layer in layers for blob in layer.inputs}
    for layer in layers:
        for blob in layer.inputs:
            if blob not in producer:
                raise FormatError(f"{path}: layer {layer.name}: input blob {blob} has no producer")
    roots = [i for i, x in enumerate(layers) if not set(x.outputs) <= consumed or not x.outputs]
    order: list[int] = []
    state: dict[int, str] = {}
    for root in roots:
        if root in state:
            continue
        state[root] = "open"
        stack = [(root, iter(layers[root].inputs))]
        while stack:
            i, pending = stack[-1]
            for blob in pending:
                j = producer[blob]
                if state.get(j) == "open":
                    raise FormatError(f"{path}: the graph has a cycle through {layers[j].name}")
                if j not in state:
                    state[j] = "open"
                    stack.append((j, iter(layers[j].inputs)))
                    break
            else:
                stack.pop()
                state[i] = "done"
                order.append(i)
    if len(order) < len(layers):  # in a DAG every layer leads to an output
        stuck = next(x.name for i, x in enumerate(layers) if i not in state)
        raise FormatError(f"{path}: the graph has a cycle through {stuck}")
    return order


class _Bin:
    """Reads the .bin front to back, never past its end."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        try:
            self.data = path.read_bytes()
        except FileNotFoundError:
            raise FormatError(f"{path}: weights file not found") from None
        except OSError as e:
            raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None

    def take(self, count: int, dtype: str, what: str, align: int = 1) -> np.ndarray:
        size = count * np.dtype(dtype).itemsize
        padded = -(-size // align) * align
        if self.offset + padded > len(self.data):
            raise FormatError(f"{self.path}: truncated in {what} at byte {self.offset}")
        array = np.frombuffer(self.data, dtype, count, self.offset)
        self.offset += padded
        return array

    def weights(self, count: int, name: str) -> np.ndarray:
        tag = int(self.take(1, "<u4", f"layer {name}")[0])
        if tag == TAG_FLOAT16:
            return self.take(count, "<f2", f"layer {name}", align=4).astype(np.float32)
        if tag == TAG_FLOAT32:
            return self.take(count, "<f4", f"layer {name}").astype(np.float32)
        if tag == TAG_INT8:
            raise FormatError(f"{self.path}: layer {name}: int8 tag 0x{tag:08X} is not supported")
        raise FormatError(f"{self.path}: layer {name}: unknown tag 0x{tag:08X}")


def _positive(path: Path, layer: NcnnLayer, key: int, default: int | None = None) -> int:
    value = layer.params.get(key, default)
    if not isinstance(value, int) or value <= 0:
        raise FormatError(f"{path}: layer {layer.name}: param {key}={value} must be a positive int")
    return value


def _read_layer(path: Path, weights: _Bin, layer: NcnnLayer) -> dict[str, np.ndarray]:
    if layer.type == "Convolution":
        if layer.params.get(8, 0) or layer.params.get(19, 0):
            raise FormatError(f"{path}: layer {layer.name}: int8 or dynamic weights unsupported")
        out, kw = _positive(path, layer, 0), _positive(path, layer, 1)
        kh, size = _positive(path, layer, 11, kw), _positive(path, layer, 6)
        kernel, has_bias = (kh, kw), layer.params.get(5, 0)
    else:  # InnerProduct
        out, size = _positive(path, layer, 0), _positive(path, layer, 2)
        kernel, has_bias = (), layer.params.get(1, 0)
    per_channel = out * math.prod(kernel)
    if size % per_channel:
        raise FormatError(
            f"{path}: layer {layer.name}: weight_data_size {size} is not a multiple of "
            f"{per_channel} (num_output x kernel)"
        )
    shape = (out, size // per_channel, *kernel)
    arrays = {"weight": weights.weights(size, layer.name).reshape(shape)}
    if has_bias:
        arrays["bias"] = weights.take(out, "<f4", f"layer {layer.name} bias").astype(np.float32)
    return arrays


def read(param_path: str | Path, bin_path: str | Path | None = None) -> Layers:
    """Weighted layers in data-flow order: [(name, {"weight", "bias"})], float32."""
    param_path = Path(param_path)
    layers = read_param(param_path)
    order = _data_flow_order(param_path, layers)
    for layer in layers:
        if layer.type in UNSUPPORTED:
            raise FormatError(f"{param_path}: layer {layer.name}: type {layer.type} unsupported")
    weights = _Bin(Path(bin_path) if bin_path is not None else param_path.with_suffix(".bin"))
    arrays = {
        i: _read_layer(param_path, weights, layer)
        for i, layer in enumerate(layers)
        if layer.type in ("Convolution", "InnerProduct")
    }
    if weights.offset != len(weights.data):
        extra = len(weights.data) - weights.offset
        raise FormatError(f"{weights.path}: {extra} bytes left over after the last layer")
    return [(layers[i].name, arrays[i]) for i in order if i in arrays]


def sniff(head: bytes) -> bool:
    return head.startswith(MAGIC.encode())


def sidecar_path(param_path: str | Path) -> Path:
    """Where the metadata of ``NAME.param`` lies: ``NAME.param.json``."""
    param_path = Path(param_path)
    return param_path.with_name(param_path.name + SIDECAR_SUFFIX)


def read_sidecar(param_path: str | Path) -> dict | None:
    """The sidecar's metadata, checked to describe a model; None when there is no sidecar."""
    path = sidecar_path(param_path)
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError(f"{path}: damaged metadata (not JSON)") from None
    if not isinstance(meta, dict) or not isinstance(meta.get(SIDECAR_KEY, {}), dict):
        raise FormatError(f"{path}: damaged metadata (not a JSON object)")
    try:
        WeightsInfo.from_meta({**meta, "num_classes": meta.get("num_classes") or 1})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{path}: damaged metadata ({type(e).__name__}: {e})") from None
    return meta


def _restore_batch_norms(path: Path, layers: Layers, ncnn_meta: dict) -> Layers:
    """Identity BatchNorms after the layers the sidecar names (the folded ones' places)."""
    after = ncnn_meta.get("batch_norm_after") or {}
    eps = ncnn_meta.get("batch_norm_eps", 0.0)
    names = {name for name, _ in layers}
    valid = isinstance(after, dict) and set(after) <= names and isinstance(eps, float)
    if not valid or not all(isinstance(n, int) and 0 < n <= 1 << 20 for n in after.values()):
        raise FormatError(f"{sidecar_path(path)}: damaged 'batch_norm_after' entry")
    restored: Layers = []
    for name, arrays in layers:
        restored.append((name, arrays))
        if name in after:  # scale 1/sqrt((1 - eps) + eps) = 1: the identity in eval mode
            n = after[name]
            identity = {"weight": np.ones(n, np.float32), "bias": np.zeros(n, np.float32)}
            identity |= {"running_mean": np.zeros(n, np.float32)}
            identity |= {"running_var": np.full(n, 1.0 - eps, np.float32)}
            restored.append((f"{name}.bn", identity))
    return restored


def _refuse_bin(path: Path) -> None:
    """A ``.bin`` given for the model: its graph (and so the model) is in the ``.param``."""
    with open(path, "rb") as f:
        if sniff(f.read(len(MAGIC))) or path.suffix.lower() != ".bin":
            return
    raise FormatError(
        f"{path}: an ncnn .bin holds only the weights; pass the .param beside it "
        f"({path.with_suffix('.param').name}) instead"
    )


def companion(path: Path) -> bool:
    """Whether ``path`` is the ``.bin`` of an ncnn ``.param`` beside it."""
    return path.suffix.lower() == ".bin" and path.with_suffix(".param").is_file()


def load(path: Path, hints: Hints) -> Contents:
    """Layers from the ``.param`` and the ``.bin`` beside it, with the sidecar's metadata.

    A file without a sidecar is taken for torchvision-preprocessed ImageNet weights (as
    ncnn's converters write them); conv10's padding is then its param 4.
    """
    _refuse_bin(path)
    layers = read(path)
    meta = read_sidecar(path)
    if meta is not None:
        own = meta.pop(SIDECAR_KEY, {})
        return Contents(layers=_restore_batch_norms(path, layers, own), meta=meta)
    convs = [layer for layer in read_param(path) if layer.type == "Convolution"]
    pad = int(convs[-1].params.get(4, 0)) if convs else 0
    meta = {"model_kwargs": {"classifier_padding": pad}, "preprocess": "torchvision"}
    return Contents(layers=layers, meta=meta)


def graph_summary(layers: list[NcnnLayer]) -> dict:
    """Layer count, layer types, and the graph's input and output blobs."""
    consumed = {b for x in layers for b in x.inputs}
    produced = {b for x in layers for b in x.outputs}
    return {
        "layers": len(layers),
        "types": dict(Counter(x.type for x in layers)),
        "inputs": [b for x in layers if x.type == "Input" for b in x.outputs],
        "outputs": [b for x in layers for b in x.outputs if b not in consumed],
        "blobs": len(consumed | produced),
    }
