"""The old Chainer SqueezeNet repo's ``.npz`` (``chainer.serializers.save_npz``).

A zip of ``.npy`` members, deflate-compressed, one per array: ``conv1/W``, ``conv1/b``,
``fireN/conv1`` (squeeze 1x1), ``fireN/conv2`` (expand 1x1), ``fireN/conv3`` (expand 3x3) with
``W`` (out, in, kh, kw) and ``b``, ``fireN/bn4`` with ``gamma``, ``beta``, ``avg_mean``,
``avg_var`` (float32) and ``N`` (int64 scalar), for N = 2..9, then ``conv10``. Keys may share a
prefix such as ``predictor/`` when a wrapping Chain was saved.

Members are read one by one with their ``.npy`` headers checked against the member size first,
so a damaged header cannot ask for a huge allocation; object arrays (pickles) are refused.
"""

from __future__ import annotations

import math
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ...errors import FormatError
from ...io import atomic_output
from . import Contents, Hints, Layers

LAYER_NAMES = [
    "conv1",
    *(f"fire{n}/{p}" for n in range(2, 10) for p in ("conv1", "conv2", "conv3", "bn4")),
    "conv10",
]

CONV = {"W": "weight", "b": "bias"}
BN = {"gamma": "weight", "beta": "bias", "avg_mean": "running_mean", "avg_var": "running_var"}
OPTIONAL = {"N": "num_batches_tracked"}
MAX_ARRAY_BYTES = 1 << 28  # far above SqueezeNet's largest array (conv10/W, 2 MB)
SUFFIXES = (".npz",)
ARCH = "squeezenet1_0_chainer"  # the only network this layout holds


def sniff(head: bytes) -> bool:
    return head[:4] == b"PK\x03\x04"  # any zip that torchvision did not claim first


def load(path: Path, hints: Hints) -> Contents:
    """The Chainer net's layers: SqueezeNet v1.0 with BatchNorm after each fire, Caffe input."""
    return Contents(layers=read(path), meta={"arch": ARCH, "preprocess": "caffe"})


def save(path: Path, contents: Contents) -> None:
    """The layers, if the model is the Chainer net (any other arch is refused by name)."""
    arch = contents.meta.get("arch")
    if arch is not None and arch != ARCH:
        raise FormatError(
            f"{path}: {arch} does not fit the old Chainer layout of a .npz, only {ARCH} does; "
            "write .safetensors"
        )
    write(path, contents.layers)


def _names(layer: str) -> dict[str, str]:
    """Chainer array name -> PyTorch parameter name for one layer."""
    return BN | OPTIONAL if layer.endswith("bn4") else CONV


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype.hasobject:
            raise ValueError("holds Python objects (pickled data), which are not loaded")
        size = math.prod(shape) * dtype.itemsize
        if size > MAX_ARRAY_BYTES:
            raise ValueError(f"shape {shape} is too large")
        if info.file_size - f.tell() != size:
            raise ValueError(f"shape {shape} does not match its {info.file_size} bytes")
        flat = np.frombuffer(f.read(size), dtype)
    if len(flat) * dtype.itemsize != size:
        raise ValueError("truncated")
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    return array.astype(dtype.newbyteorder("="), order="C")  # a writable, native copy


def _load(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                if key == info.filename or key in arrays:
                    raise FormatError(f"{path}: unexpected or repeated member {info.filename!r}")
                try:
                    arrays[key] = _member(zf, info)
                except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile,
                        SyntaxError, tokenize.TokenError) as e:  # fmt: skip
                    # numpy parses the .npy header as a Python literal: damage -> SyntaxError
                    raise FormatError(f"{path}: array {key!r}: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise FormatError(f"{path}: not a readable npz file ({e})") from None
    return arrays


def _prefix(path: Path, arrays: dict[str, np.ndarray]) -> str:
    keys = [k for k in arrays if k == "conv10/W" or k.endswith("/conv10/W")]
    if len(keys) != 1:
        raise FormatError(f"{path}: no single conv10/W array (not a Chainer SqueezeNet file?)")
    prefix = keys[0].removesuffix("conv10/W")
    if not all(k.startswith(prefix) for k in arrays):
        raise FormatError(f"{path}: arrays outside the prefix {prefix!r}")
    return prefix


def _check(path: Path, layers: Layers) -> None:
    """Raise unless the arrays form the Chainer net: conv shapes chain and BatchNorms fit."""
    channels = squeeze = None  # channels entering the next layer; a fire's squeeze output
    for name, params in layers:
        n = params.get("num_batches_tracked")
        if n is not None and (n.shape != () or n.dtype.kind not in "iu"):
            raise FormatError(f"{path}: {name}/N is not an integer scalar")
        floats = [a for k, a in params.items() if k != "num_batches_tracked"]
        if any(a.dtype.kind != "f" for a in floats):
            raise FormatError(f"{path}: {name}: arrays are not floating point")
        if name.endswith("bn4"):
            if any(a.shape != (channels,) for a in floats):
                raise FormatError(f"{path}: {name}: statistics do not match {channels} channels")
            continue
        weight, bias = params["weight"], params["bias"]
        inputs = squeeze if name.endswith(("conv2", "conv3")) else channels
        if (
            weight.ndim != 4
            or bias.shape != weight.shape[:1]
            or inputs not in (None, weight.shape[1])
        ):
            raise FormatError(
                f"{path}: {name}: weight {weight.shape} and bias {bias.shape} do not fit "
                f"{inputs} input channels"
            )
        out = weight.shape[0]
        if name.endswith("conv3"):
            channels += out
        else:
            channels = out
        if name.endswith("conv1"):
            squeeze = out


def read(path: str | Path) -> Layers:
    """[(name, params)] in network order: conv1, fireN/conv1..conv3 and bn4, conv10."""
    path = Path(path)
    arrays = _load(path)
    prefix = _prefix(path, arrays)
    layers: Layers = []
    used = set()
    for layer in LAYER_NAMES:
        params = {}
        for src, dst in _names(layer).items():
            key = f"{prefix}{layer}/{src}"
            if key in arrays:
                params[dst] = arrays[key]
                used.add(key)
            elif src not in OPTIONAL:
                raise FormatError(f"{path}: missing array {key!r}")
        layers.append((layer, params))
    extra = sorted(set(arrays) - used)
    if extra:
        raise FormatError(f"{path}: unexpected arrays {extra[:5]}")
    _check(path, layers)
    return layers


def write(path: str | Path, layers: Layers) -> None:
    """Write ``layers`` (taken by position, in :data:`LAYER_NAMES` order) as Chainer would.

    Arrays are float32 and ``N`` int64 (0 when absent), deflate-compressed like save_npz.
    """
    path = Path(path)
    if len(layers) != len(LAYER_NAMES):
        raise FormatError(f"{path}: expected {len(LAYER_NAMES)} layers, got {len(layers)}")
    named: Layers = []
    arrays: dict[str, np.ndarray] = {}
    for layer, (_, params) in zip(LAYER_NAMES, layers, strict=True):
        names = _names(layer)
        wanted = {v for k, v in names.items() if k not in OPTIONAL}
        if not wanted <= set(params) <= set(names.values()):
            raise FormatError(f"{path}: {layer} needs {sorted(wanted)}, got {sorted(params)}")
        for src, dst in names.items():
            if src in OPTIONAL:
                arrays[f"{layer}/{src}"] = np.asarray(params.get(dst, 0), np.int64).reshape(())
            else:
                arrays[f"{layer}/{src}"] = np.asarray(params[dst], np.float32)
        named.append((layer, params))
    _check(path, named)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
