"""The ncnn target: ``NAME.param`` (the graph as text) + ``NAME.bin`` (the weights) + a sidecar.

The graph takes one CHW image in blob ``input`` and gives the logits in blob ``logits``. Each
weighted layer's weights go to the ``.bin`` behind a tag (0 for float32, ``0x01306B47`` for
float16 with ``fp16=True``), its biases after them as untagged float32, as ncnn's own tools
write them. Fire BatchNorms are folded into the convolutions first (``fold.fold_batch_norm``);
a bypass is a BinaryOp sum; a blob read by two layers goes through a Split, as ncnn requires.

ncnn has no room for metadata, so ``NAME.param.json`` beside the ``.param`` holds the model's
``weights_info.to_meta()``, plus under ``"ncnn"`` where the folded BatchNorms were: the reader
(``weights/formats/ncnn.py``) puts identity BatchNorms back there, so that ``load_model`` gives
back the same architecture, classes and preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...errors import SqueezeNetError
from ...io import atomic_write_bytes
from ...models import Fire
from ...weights.formats.ncnn import (
    INPUT_BLOB,
    MAGIC,
    OUTPUT_BLOB,
    SIDECAR_KEY,
    TAG_FLOAT16,
    TAG_FLOAT32,
    sidecar_path,
)
from ..fold import batch_norm_fires, fold_batch_norm
from . import input_shape

SUFFIXES = (".param", ".bin", ".param.json")
RELU = 1  # ncnn's activation_type for a ReLU fused into a Convolution or InnerProduct
MAX, AVERAGE = 0, 1  # Pooling's pooling_type
FULL, VALID = 0, 1  # Pooling's pad_mode: Caffe's rounding up, or rounding down


def _number(value: int | float) -> str:
    """A param value as ncnn reads it: floats need a '.' or an exponent."""
    if isinstance(value, bool | int):
        return str(int(value))
    text = repr(float(value))
    return text if any(c in text for c in ".eE") else f"{text}.0"


class _Graph:
    """Layers in topological order, each blob's shape, and the weights in layer order."""

    def __init__(self, x: torch.Tensor, fp16: bool) -> None:
        self.fp16 = fp16
        self.layers: list[tuple[str, str, list[str], list[str], dict]] = []
        self.values: dict[str, torch.Tensor] = {}  # blob -> the module's activation, for shapes
        self.weights: list[bytes] = []
        self.names: set[str] = set()
        self.add("Input", "input", [], x, {0: x.shape[3], 1: x.shape[2], 2: x.shape[1]}, INPUT_BLOB)

    def add(
        self, kind: str, name: str, inputs: list[str], value: torch.Tensor, params: dict,
        blob: str | None = None,
    ) -> str:  # fmt: skip
        """Append a layer with one output blob (named after the layer unless ``blob``)."""
        name = name.replace("/", ".") or kind
        while name in self.names:
            name += "_"
        self.names.add(name)
        blob = blob or name
        self.layers.append((kind, name, inputs, [blob], params))
        self.values[blob] = value
        return blob

    def tensor(self, array: torch.Tensor, tagged: bool) -> None:
        data = array.detach().double().numpy().ravel()
        if not tagged:
            self.weights.append(data.astype("<f4").tobytes())
        elif self.fp16:
            raw = data.astype("<f2").tobytes()
            self.weights.append(np.uint32(TAG_FLOAT16).astype("<u4").tobytes() + raw)
            self.weights.append(bytes(-len(raw) % 4))  # ncnn aligns fp16 data to 4 bytes
        else:
            tag = np.uint32(TAG_FLOAT32).astype("<u4").tobytes()
            self.weights.append(tag + data.astype("<f4").tobytes())

    def param_text(self) -> str:
        """The ``.param`` file, with a Split wherever a blob has several readers."""
        readers: dict[str, list[tuple[int, int]]] = {}
        for i, (_, _, inputs, _, _) in enumerate(self.layers):
            for j, blob in enumerate(inputs):
                readers.setdefault(blob, []).append((i, j))
        layers = [[kind, name, list(ins), outs, params] for kind, name, ins, outs, params in self]
        splits: dict[int, list] = {}
        for blob, uses in readers.items():
            if len(uses) > 1:
                copies = [f"{blob}_split{k}" for k in range(len(uses))]
                for (i, j), copy in zip(uses, copies, strict=True):
                    layers[i][2][j] = copy
                producer = next(i for i, x in enumerate(self.layers) if blob in x[3])
                splits[producer] = ["Split", f"{blob}_split", [blob], copies, {}]
        ordered = [x for i, layer in enumerate(layers) for x in (layer, splits.get(i)) if x]
        blobs = {b for _, _, ins, outs, _ in ordered for b in ins + outs}
        lines = [MAGIC, f"{len(ordered)} {len(blobs)}"]
        for kind, name, ins, outs, params in ordered:
            fields = [f"{kind:<16}", f"{name:<24}", str(len(ins)), str(len(outs)), *ins, *outs]
            fields += [f"{k}={_number(v)}" for k, v in params.items()]
            lines.append(" ".join(fields))
        return "\n".join(lines) + "\n"

    def __iter__(self):
        return iter(self.layers)


def _conv(g: _Graph, name: str, conv: nn.Conv2d, blob: str, relu: bool) -> str:
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        raise SqueezeNetError(f"ncnn export: {name}: grouped, dilated or non-zero-padded conv")
    if isinstance(conv.padding, str):
        raise SqueezeNetError(f"ncnn export: {name}: padding={conv.padding!r} is not expressible")
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    params = {0: conv.out_channels, 1: kw, 11: kh, 3: sw, 13: sh, 4: pw, 14: ph}
    params |= {5: int(conv.bias is not None), 6: conv.weight.numel()}
    return _weighted(g, "Convolution", name, conv, blob, relu, params)


def _linear(g: _Graph, name: str, fc: nn.Linear, blob: str, relu: bool) -> str:
    params = {0: fc.out_features, 1: int(fc.bias is not None), 2: fc.weight.numel()}
    return _weighted(g, "InnerProduct", name, fc, blob, relu, params)


def _weighted(
    g: _Graph, kind: str, name: str, layer: nn.Module, blob: str, relu: bool, params: dict
) -> str:
    """A layer with a weight (tagged) and an optional bias, its ReLU fused as activation 9."""
    params |= {9: RELU} if relu else {}
    with torch.no_grad():
        value = layer(g.values[blob])
    g.tensor(layer.weight, tagged=True)
    if layer.bias is not None:
        g.tensor(layer.bias, tagged=False)
    return g.add(kind, name, [blob], value.relu() if relu else value, params)


def _pool(g: _Graph, name: str, pool: nn.Module, blob: str) -> str:
    """Max and average pooling; refuses what ncnn would round or average differently."""
    x = g.values[blob]
    with torch.no_grad():
        value = pool(x)
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        if value.shape[2:] == x.shape[2:]:
            return blob  # already the pooled size: nothing to do
        if tuple(value.shape[2:]) == (1, 1):
            return g.add("Pooling", name, [blob], value.flatten(1), {0: AVERAGE, 4: 1})
        out_h, out_w = value.shape[2:]
        return g.add("Pooling", name, [blob], value, {0: AVERAGE, 7: 1, 8: out_w, 18: out_h})
    k, s, p = (pool.kernel_size, pool.stride, pool.padding)
    k, s, p = ((v, v) if isinstance(v, int) else tuple(v) for v in (k, s, p))
    kind = MAX if isinstance(pool, nn.MaxPool2d) else AVERAGE
    if kind == MAX and pool.dilation not in (1, (1, 1)):
        raise SqueezeNetError(f"ncnn export: {name}: dilated max pooling is not expressible")
    if kind == AVERAGE and (any(p) or pool.ceil_mode or pool.divisor_override):
        raise SqueezeNetError(f"ncnn export: {name}: padded or rounded-up average pooling")
    mode = FULL if pool.ceil_mode else VALID
    sizes = [x.shape[2 + d] + 2 * p[d] - k[d] for d in (0, 1)]
    expected = [(n + (-n % s[d] if mode == FULL else 0)) // s[d] + 1 for d, n in enumerate(sizes)]
    if expected != list(value.shape[2:]):
        raise SqueezeNetError(
            f"ncnn export: {name}: ncnn pools to {expected}, PyTorch to {list(value.shape[2:])}"
        )
    params = {0: kind, 1: k[1], 11: k[0], 2: s[1], 12: s[0], 3: p[1], 13: p[0], 5: mode}
    return g.add("Pooling", name, [blob], value, params)


def _fire(g: _Graph, name: str, fire: Fire, blob: str) -> str:
    """Squeeze, the two expands (their ReLU fused), concat, then the bypass summed."""
    squeeze = _conv(g, f"{name}.squeeze", fire.squeeze, blob, relu=True)
    e1 = _conv(g, f"{name}.expand1x1", fire.expand1x1, squeeze, relu=True)
    e3 = _conv(g, f"{name}.expand3x3", fire.expand3x3, squeeze, relu=True)
    value = torch.cat([g.values[e1], g.values[e3]], 1)
    out = g.add("Concat", f"{name}.concat", [e1, e3], value, {0: 0})
    if fire.bypass is None:
        return out
    bypass = blob
    if isinstance(fire.bypass, nn.Conv2d):
        bypass = _conv(g, f"{name}.bypass", fire.bypass, blob, relu=False)
    total = g.values[out] + g.values[bypass]
    return g.add("BinaryOp", f"{name}.sum", [out, bypass], total, {0: 0})  # 0: add


def _lrn(g: _Graph, name: str, lrn: nn.LocalResponseNorm, blob: str) -> str:
    if lrn.size % 2 == 0:  # PyTorch's window is then lopsided, ncnn's is not
        raise SqueezeNetError(f"ncnn export: {name}: LocalResponseNorm of even size {lrn.size}")
    with torch.no_grad():
        value = lrn(g.values[blob])
    params = {0: 0, 1: lrn.size, 2: float(lrn.alpha), 3: float(lrn.beta), 4: float(lrn.k)}
    return g.add("LRN", name, [blob], value, params)


def _sequence(g: _Graph, prefix: str, modules: nn.Module, blob: str) -> str:
    """Each module of a Sequential; a ReLU right after a conv or linear layer is fused."""
    children = list(modules.named_children())
    fused = False
    for i, (child, m) in enumerate(children):
        name = f"{prefix}.{child}"
        relu_next = i + 1 < len(children) and isinstance(children[i + 1][1], nn.ReLU)
        if fused:
            fused = False
        elif isinstance(m, nn.Conv2d):
            blob, fused = _conv(g, name, m, blob, relu_next), relu_next
        elif isinstance(m, nn.Linear):
            blob, fused = _linear(g, name, m, blob, relu_next), relu_next
        elif isinstance(m, nn.ReLU):
            blob = g.add("ReLU", name, [blob], g.values[blob].relu(), {})
        elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d):
            blob = _pool(g, name, m, blob)
        elif isinstance(m, Fire):
            blob = _fire(g, name, m, blob)
        elif isinstance(m, nn.LocalResponseNorm):
            blob = _lrn(g, name, m, blob)
        elif not isinstance(m, nn.Dropout | nn.Identity):  # both do nothing in eval mode
            raise SqueezeNetError(f"ncnn export: layer {name} ({type(m).__name__}) unsupported")
    return blob


def _flatten(g: _Graph, blob: str) -> str:
    value = g.values[blob]
    if value.dim() == 2:
        return blob
    return g.add("Flatten", "flatten", [blob], value.flatten(1), {})


def build_graph(model: nn.Module, fp16: bool = False, shape: tuple | None = None) -> _Graph:
    """The folded eval-mode model as an ncnn graph; SqueezeNetError for what ncnn can't hold.

    ``shape``: the (C, H, W) input, by default the preprocessing's crop.
    """
    x = torch.zeros(1, *(shape or input_shape(model)))
    g = _Graph(x, fp16)
    if not hasattr(model, "features") or not hasattr(model, "classifier"):
        raise SqueezeNetError(f"ncnn export: {type(model).__name__} is not a model of this package")
    blob = _sequence(g, "features", model.features, INPUT_BLOB)
    if hasattr(model, "avgpool"):  # the baselines: pool, flatten, fully connected layers
        blob = _flatten(g, _pool(g, "avgpool", model.avgpool, blob))
        blob = _sequence(g, "classifier", model.classifier, blob)
    else:  # SqueezeNet: dropout, conv10, ReLU, pool, then an optional dense layer
        blob = _flatten(g, _sequence(g, "classifier", model.classifier, blob))
        if getattr(model, "fc", None) is not None:
            blob = _linear(g, "fc", model.fc, blob, relu=False)
    with torch.no_grad():
        expected = model(x)
    if g.values[blob].shape != expected.shape or not torch.allclose(g.values[blob], expected):
        raise SqueezeNetError(f"ncnn export: {type(model).__name__}'s forward is not expressible")
    kind, name, inputs, _, params = g.layers[-1]
    g.layers[-1] = (kind, name, inputs, [OUTPUT_BLOB], params)
    return g


def _sidecar(model: nn.Module) -> dict:
    """``weights_info.to_meta()`` and, under SIDECAR_KEY, the BatchNorms folded away."""
    info = getattr(model, "weights_info", None)
    meta = info.to_meta() if info is not None else {}
    names = {id(m): n for n, m in model.named_modules()}
    folded = {
        f"{names[id(fire)]}.expand3x3": fire.bn.num_features for fire in batch_norm_fires(model)
    }
    eps = {fire.bn.eps for fire in batch_norm_fires(model)}
    extra = {"batch_norm_after": folded, "batch_norm_eps": eps.pop()} if folded else {}
    return {**meta, SIDECAR_KEY: {"input": INPUT_BLOB, "output": OUTPUT_BLOB, **extra}}


def files(
    model: nn.Module, fp16: bool = False, shape: tuple | None = None
) -> tuple[str, bytes, dict]:
    """(``.param`` text, ``.bin`` bytes, sidecar dict) for ``model`` (eval mode)."""
    model.eval()
    graph = build_graph(fold_batch_norm(model), fp16, shape)
    return graph.param_text(), b"".join(graph.weights), _sidecar(model)


def write(model: nn.Module, path: Path, *, fp16: bool = False) -> None:
    """Write ``path`` (a ``.param``), the ``.bin`` beside it and the ``.param.json`` sidecar.

    The ``.param`` goes last, so a reader never finds it without its weights.
    """
    path = Path(path)
    if path.suffix.lower() != ".param":
        raise SqueezeNetError(f"{path}: an ncnn export is named NAME.param (NAME.bin beside it)")
    param, weights, meta = files(model, fp16)
    atomic_write_bytes(path.with_suffix(".bin"), weights)
    atomic_write_bytes(sidecar_path(path), json.dumps(meta, indent=1).encode())
    atomic_write_bytes(path, param.encode())
