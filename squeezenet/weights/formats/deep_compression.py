"""Song Han's Deep Compression ``.net`` file (compressed_SqueezeNet.net): pruned, 8-bit shared.

Layout, all little-endian: ``uint32 nz[26]``, then per conv layer in prototxt order
``float32 codebook[256]``, ``float32 bias[out]``, ``uint8 code[nz]`` and
``uint8 gaps[(nz-1)//2+1]`` (4-bit gaps, low nibble first). The k-th stored value sits at
``cumsum(gap+1)-1`` of the flattened (out, in, kh, kw) weight; other positions are 0. A run of
more than 15 zeros is bridged by "filler" entries (gap 15, code 0, value 0.0). The file
holds no shapes, so the caller passes them (from the architecture or a Caffe prototxt).

Facts checked on the real file: ``codebook[0] == 0.0`` in every layer and no other entry is
0.0; every code-0 entry has gap 15, i.e. is a filler, and no stored value other than a filler
is zero; fillers come exactly where a gap exceeds 15 (``gap // 16`` of them before the value);
nothing is stored after the last nonzero; an odd count leaves a zero high nibble. So a dense
weight plus its codebook determine the stream, and :func:`encode` reproduces it byte for byte.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import FormatError
from ...io import atomic_write_bytes
from . import Contents, Hints, Layers
from ._prototxt import read_conv_specs

LAYER_COUNT = 26
CODEBOOK_SIZE = 256
MAX_GAP = 15

SUFFIXES = (".net",)

Shapes = list[tuple[str, tuple[int, ...]]]


def _squeezenet1_0_shapes() -> Shapes:
    """SqueezeNet v1.0's conv shapes in file order, named as in its Caffe prototxt."""
    fires = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]
    shapes, channels = [("conv1", (96, 3, 7, 7))], 96
    for n, (squeeze, expand) in enumerate(fires, 2):
        shapes += [
            (f"fire{n}/squeeze1x1", (squeeze, channels, 1, 1)),
            (f"fire{n}/expand1x1", (expand, squeeze, 1, 1)),
            (f"fire{n}/expand3x3", (expand, squeeze, 3, 3)),
        ]
        channels = 2 * expand
    return shapes + [("conv10", (1000, channels, 1, 1))]


def sniff(head: bytes) -> bool:
    return False  # raw arrays, no magic bytes: the suffix decides


def load(path: Path, hints: Hints) -> Contents:
    """SqueezeNet v1.0 layers; shapes and conv10's padding from a prototxt when given."""
    shapes, pad = _squeezenet1_0_shapes(), 1  # Caffe's v1.0 pads conv10 by 1
    if hints.prototxt is not None:
        specs = read_conv_specs(hints.prototxt)
        shapes, pad = [(spec.name, spec.shape) for spec in specs], specs[-1].pad[0]
    meta = {"arch": "squeezenet1_0", "model_kwargs": {"classifier_padding": pad}}
    return Contents(layers=read(path, shapes), meta={**meta, "preprocess": "caffe"})


@dataclass
class CompressedLayer:
    """One conv layer as stored: codebook, bias, one code and one gap per stored value."""

    name: str
    shape: tuple[int, ...]
    codebook: np.ndarray  # (256,) float32
    bias: np.ndarray  # (out,) float32
    codes: np.ndarray  # (nz,) uint8
    gaps: np.ndarray  # (nz,) uint8, each 0..15


def _gap_bytes(nz: int) -> int:
    return (nz - 1) // 2 + 1  # 0 when nz == 0


def _layer_bytes(shape: tuple[int, ...], nz: int) -> int:
    return 4 * CODEBOOK_SIZE + 4 * shape[0] + nz + _gap_bytes(nz)


def _check_shapes(path: Path, shapes: Shapes) -> None:
    if len(shapes) != LAYER_COUNT:
        raise FormatError(f"{path}: expected {LAYER_COUNT} layer shapes, got {len(shapes)}")
    for name, shape in shapes:
        if not shape or not all(isinstance(d, int | np.integer) and d > 0 for d in shape):
            raise FormatError(f"{path}: layer {name}: bad weight shape {shape}")


def read_raw(path: str | Path, shapes: Shapes) -> list[CompressedLayer]:
    """Read every layer as stored; ``shapes`` is [(name, (out, in, kh, kw))] in file order."""
    path = Path(path)
    _check_shapes(path, shapes)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = f.read(4 * LAYER_COUNT)
            if len(header) < 4 * LAYER_COUNT:
                raise FormatError(f"{path}: truncated header ({size} bytes)")
            counts = [int(n) for n in np.frombuffer(header, "<u4")]
            for (name, shape), nz in zip(shapes, counts, strict=True):
                if nz > math.prod(shape):
                    raise FormatError(
                        f"{path}: layer {name}: {nz} stored values exceed its "
                        f"{math.prod(shape)} weights"
                    )
            expected = len(header) + sum(
                _layer_bytes(s, n) for (_, s), n in zip(shapes, counts, strict=True)
            )
            if size < expected:
                raise FormatError(f"{path}: truncated: {size} bytes, the header needs {expected}")
            if size > expected:
                raise FormatError(f"{path}: {size - expected} unexpected bytes after the data")
            data = f.read()
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) != size - len(header):
        raise FormatError(f"{path}: file changed while being read")

    layers, offset = [], 0

    def take(count: int, dtype: str) -> np.ndarray:
        nonlocal offset
        array = np.frombuffer(data, dtype, count, offset).copy()
        offset += array.nbytes
        return array

    for (name, shape), nz in zip(shapes, counts, strict=True):
        codebook, bias = take(CODEBOOK_SIZE, "<f4"), take(shape[0], "<f4")
        codes, packed = take(nz, "u1"), take(_gap_bytes(nz), "u1")
        gaps = np.stack([packed & 0xF, packed >> 4], axis=1).reshape(-1)[:nz]
        layer = CompressedLayer(name, tuple(map(int, shape)), codebook, bias, codes, gaps)
        if nz and _positions(layer)[-1] >= math.prod(shape):
            raise FormatError(f"{path}: layer {name}: gaps run past the end of the weight")
        layers.append(layer)
    return layers


def _positions(layer: CompressedLayer) -> np.ndarray:
    return np.cumsum(layer.gaps.astype(np.int64) + 1) - 1


def decode(layer: CompressedLayer) -> tuple[np.ndarray, np.ndarray]:
    """Dense float32 (weight, bias) of one stored layer."""
    numel = math.prod(layer.shape)
    positions = _positions(layer)
    if len(positions) and positions[-1] >= numel:
        raise FormatError(f"layer {layer.name}: gaps run past the end of the weight")
    weight = np.zeros(numel, np.float32)
    weight[positions] = layer.codebook[layer.codes]
    return weight.reshape(layer.shape), layer.bias.astype(np.float32)


def read(path: str | Path, shapes: Shapes) -> Layers:
    """Decoded layers: [(name, {"weight", "bias"})] with names taken from ``shapes``."""
    out: Layers = []
    for layer in read_raw(path, shapes):
        weight, bias = decode(layer)
        out.append((layer.name, {"weight": weight, "bias": bias}))
    return out


def encode(
    weight: np.ndarray, bias: np.ndarray, codebook: np.ndarray, name: str
) -> CompressedLayer:
    """Store a dense weight whose nonzero values all come from ``codebook``, as the tool did.

    Zeros are never stored except as fillers, so a stored value of 0.0 (never seen in the
    real file) could not survive a decode/encode round trip; fillers decode to
    ``codebook[0]``, which must therefore be 0.0 whenever one is needed.
    """
    codebook = np.asarray(codebook, np.float32)
    if codebook.shape != (CODEBOOK_SIZE,):
        raise FormatError(f"layer {name}: codebook must hold {CODEBOOK_SIZE} values")
    flat = np.asarray(weight, np.float32).reshape(-1)
    positions = np.flatnonzero(flat)
    values = flat[positions]
    sorted_values, first_index = np.unique(codebook, return_index=True)
    slot = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    missing = sorted_values[slot] != values
    if missing.any():
        bad = values[missing][0]
        raise FormatError(f"layer {name}: weight value {float(bad)!r} is not in the codebook")
    value_codes = first_index[slot].astype(np.uint8)

    # Zeros before each value: gap // 16 fillers (gap 15, code 0), then the value's own gap.
    skipped = np.diff(positions, prepend=-1) - 1
    fillers = skipped // (MAX_GAP + 1)
    if fillers.any() and codebook[0] != 0:
        raise FormatError(f"layer {name}: fillers need codebook[0] == 0.0")
    value_slots = np.cumsum(fillers + 1) - 1
    gaps = np.full(len(positions) + int(fillers.sum()), MAX_GAP, np.uint8)
    codes = np.zeros(len(gaps), np.uint8)
    gaps[value_slots] = skipped % (MAX_GAP + 1)
    codes[value_slots] = value_codes
    bias = np.asarray(bias, np.float32).reshape(-1)
    return CompressedLayer(name, tuple(np.shape(weight)), codebook, bias, codes, gaps)


def write_raw(path: str | Path, layers: list[CompressedLayer]) -> None:
    """Write ``layers`` in the original byte layout, atomically."""
    path = Path(path)
    if len(layers) != LAYER_COUNT:
        raise FormatError(f"{path}: expected {LAYER_COUNT} layers, got {len(layers)}")
    chunks = [np.array([len(layer.codes) for layer in layers], "<u4").tobytes()]
    for layer in layers:
        if (
            len(layer.codebook) != CODEBOOK_SIZE
            or len(layer.bias) != layer.shape[0]
            or len(layer.gaps) != len(layer.codes)
            or (len(layer.gaps) and layer.gaps.max() > MAX_GAP)
        ):
            raise FormatError(f"{path}: layer {layer.name}: inconsistent codebook, bias or gaps")
        gaps = np.append(layer.gaps, 0) if len(layer.gaps) % 2 else layer.gaps
        gaps = gaps.astype(np.uint8)
        chunks += [
            np.asarray(layer.codebook, "<f4").tobytes(),
            np.asarray(layer.bias, "<f4").tobytes(),
            np.asarray(layer.codes, "u1").tobytes(),
            (gaps[0::2] | (gaps[1::2] << 4)).tobytes(),
        ]
    atomic_write_bytes(path, b"".join(chunks))
