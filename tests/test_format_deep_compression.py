"""Deep Compression .net reader/writer: the real file byte for byte, and damaged copies."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

from squeezenet.errors import FormatError
from squeezenet.weights.formats import deep_compression as dc

NET = "weights/deep-compression/compressed_SqueezeNet.net"
PROTOTXT = "weights/deep-compression/SqueezeNet_deploy.prototxt"
SHA256 = "e4ab6960ae8cd81505e1c2136921201507e930966c53deaf15862a395b3a3261"


def _v10_shapes() -> list[tuple[str, tuple[int, ...]]]:
    shapes = [("conv1", (96, 3, 7, 7))]
    fires = [(16, 96, 64), (16, 128, 64), (32, 128, 128), (32, 256, 128)]
    fires += [(48, 256, 192), (48, 384, 192), (64, 384, 256), (64, 512, 256)]
    for n, (squeeze, cin, expand) in enumerate(fires, 2):
        shapes += [
            (f"fire{n}/conv1x1_1", (squeeze, cin, 1, 1)),
            (f"fire{n}/conv1x1_2", (expand, squeeze, 1, 1)),
            (f"fire{n}/conv3x3_2", (expand, squeeze, 3, 3)),
        ]
    return shapes + [("conv_final", (1000, 512, 1, 1))]


V10 = _v10_shapes()
SMALL = [(f"layer{i}", (4, 3, 3, 3)) for i in range(dc.LAYER_COUNT)]


def _codebook(rng: np.random.Generator) -> np.ndarray:
    values = np.unique(rng.normal(size=400).astype(np.float32))
    return np.concatenate([[0.0], rng.permutation(values[values != 0])[:255]]).astype(np.float32)


def _small_file(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Write 26 sparse (4, 3, 3, 3) layers (runs of zeros > 15 included); return them dense."""
    rng = np.random.default_rng(0)
    dense, layers = [], []
    for name, shape in SMALL:
        codebook = _codebook(rng).astype(np.float32)
        weight = codebook[rng.integers(1, 256, size=shape)]
        weight.reshape(-1)[rng.random(math.prod(shape)) < 0.6] = 0.0
        weight.reshape(-1)[10:40] = 0.0  # forces fillers
        bias = rng.normal(size=shape[0]).astype(np.float32)
        dense.append((weight, bias))
        layers.append(dc.encode(weight, bias, codebook, name))
    dc.write_raw(path, layers)
    return dense


@pytest.fixture(params=["small", "real"])
def net_file(request, tmp_path) -> tuple[Path, list]:
    """(a copy of a valid .net file in tmp_path, its shapes)."""
    path = tmp_path / "model.net"
    if request.param == "real":
        path.write_bytes(shared_path(NET).read_bytes())
        return path, V10
    _small_file(path)
    return path, SMALL


def _fails(path: Path, shapes) -> str:
    with pytest.raises(FormatError, match=re.escape(str(path))) as excinfo:
        dc.read(path, shapes)
    return str(excinfo.value)


def test_real_file_parameters_and_sparsity():
    layers = dc.read(shared_path(NET), V10)
    assert [(name, arrays["weight"].shape) for name, arrays in layers] == V10
    arrays = [a for _, d in layers for a in d.values()]
    assert all(a.dtype == np.float32 for a in arrays)
    assert sum(a.size for a in arrays) == 1_248_424
    zeros = sum(int((a == 0).sum()) for a in arrays) / 1_248_424
    assert 0.66 < zeros < 0.67


def test_real_decoded_values_come_from_codebooks():
    for layer in dc.read_raw(shared_path(NET), V10):
        weight, _ = dc.decode(layer)
        assert np.isin(weight, layer.codebook).all()
        assert layer.codebook[0] == 0.0 and (layer.codebook[1:] != 0).all()
        # every zero that is stored is a filler bridging a run of more than 15 zeros
        assert (layer.gaps[layer.codes == 0] == 15).all()


def test_real_round_trip_is_byte_exact(tmp_path):
    raw = dc.read_raw(shared_path(NET), V10)
    encoded = [dc.encode(*dc.decode(layer), layer.codebook, layer.name) for layer in raw]
    out = tmp_path / "again.net"
    dc.write_raw(out, encoded)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHA256


def test_small_round_trip(tmp_path):
    path = tmp_path / "small.net"
    dense = _small_file(path)
    for (_, arrays), (weight, bias) in zip(dc.read(path, SMALL), dense, strict=True):
        np.testing.assert_array_equal(arrays["weight"], weight)
        np.testing.assert_array_equal(arrays["bias"], bias)
    raw = dc.read_raw(path, SMALL)
    assert all((layer.codes == 0).any() for layer in raw)  # the fillers are there


def test_encode_places_fillers_like_the_tool():
    codebook = np.zeros(256, np.float32)
    codebook[1:] = np.arange(1, 256)
    weight = np.zeros(60, np.float32)
    weight[[0, 17, 50, 51]] = [3, 4, 5, 6]
    layer = dc.encode(weight, np.zeros(1, np.float32), codebook, "x")
    # 16 zeros before 17: one filler (gap 15) then gap 0; 32 zeros before 50: two fillers
    assert layer.gaps.tolist() == [0, 15, 0, 15, 15, 0, 0]
    assert layer.codes.tolist() == [3, 0, 4, 0, 0, 5, 6]
    np.testing.assert_array_equal(dc.decode(layer)[0], weight)


def test_encode_rejects_values_outside_the_codebook():
    codebook = np.arange(256, dtype=np.float32)
    with pytest.raises(FormatError, match="0.5 is not in the codebook"):
        dc.encode(np.array([1.0, 0.5], np.float32), np.zeros(1), codebook, "x")
    with pytest.raises(FormatError, match=r"codebook\[0\]"):
        dc.encode(np.eye(20, dtype=np.float32), np.zeros(20), codebook + 1, "x")


@pytest.mark.parametrize("where", ["mid-header", "after-header", "mid-codebook", "mid", "end-1"])
def test_truncated(net_file, where):
    path, shapes = net_file
    data = path.read_bytes()
    cut = {"mid-header": 50, "after-header": 104, "mid-codebook": 600}.get(where)
    cut = cut or (len(data) // 2 if where == "mid" else len(data) - 1)
    path.write_bytes(data[:cut])
    message = _fails(path, shapes)
    assert "truncated" in message


def test_trailing_bytes(net_file):
    path, shapes = net_file
    path.write_bytes(path.read_bytes() + b"\0")
    assert "1 unexpected bytes" in _fails(path, shapes)


@pytest.mark.parametrize("nz", [2**31, 2**32 - 1, "one more"])
def test_absurd_stored_count(net_file, nz):
    path, shapes = net_file
    data = bytearray(path.read_bytes())
    old = int(np.frombuffer(data, "<u4", 1, 4)[0])
    data[4:8] = np.uint32(old + 1 if nz == "one more" else nz).tobytes()  # layer 1
    path.write_bytes(bytes(data))
    _fails(path, shapes)


def test_wrong_number_of_shapes(net_file):
    path, shapes = net_file
    assert "expected 26 layer shapes, got 25" in _fails(path, shapes[:-1])


def test_gaps_running_past_the_weight(tmp_path):
    path = tmp_path / "bad.net"
    _small_file(path)
    layers = dc.read_raw(path, SMALL)
    layers[3].gaps[:] = 15  # 16 positions per value: far past 108 weights
    dc.write_raw(path, layers)
    assert "past the end" in _fails(path, SMALL)


def test_missing_file(tmp_path):
    _fails(tmp_path / "nothing.net", SMALL)
