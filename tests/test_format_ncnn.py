"""ncnn .param/.bin reader: the real torchvision export, a tiny hand-made model, damaged copies."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

from squeezenet.errors import FormatError
from squeezenet.weights.formats import ncnn

PARAM = "weights/ncnn/squeezenet_v1.1.ncnn.param"


def _v11_shapes() -> list[tuple[int, ...]]:
    """torchvision squeezenet1_1 conv weight shapes, in module registration order."""
    shapes = [(64, 3, 3, 3)]
    fires = [(16, 64, 64), (16, 128, 64), (32, 128, 128), (32, 256, 128)]
    fires += [(48, 256, 192), (48, 384, 192), (64, 384, 256), (64, 512, 256)]
    for squeeze, cin, expand in fires:
        shapes += [(squeeze, cin, 1, 1), (expand, squeeze, 1, 1), (expand, squeeze, 3, 3)]
    return shapes + [(1000, 512, 1, 1)]


@pytest.fixture
def real_copy(tmp_path) -> Path:
    """A copy of the real .param and .bin in tmp_path; returns the .param path."""
    param = shared_path(PARAM)
    shutil.copy(param, tmp_path / param.name)
    shutil.copy(param.with_suffix(".bin"), tmp_path / param.with_suffix(".bin").name)
    return tmp_path / param.name


def _fails(path: Path, param: Path | None = None) -> str:
    """Assert reading ``param`` (default ``path``) fails with a message naming ``path``."""
    with pytest.raises(FormatError, match=re.escape(str(path))) as excinfo:
        ncnn.read(param or path)
    return str(excinfo.value)


def _edit(path: Path, pattern: str, new: str) -> None:
    text, count = re.subn(pattern, new, path.read_text(), count=1)
    assert count == 1
    path.write_text(text)


def test_real_shapes_and_parameter_count():
    layers = ncnn.read(shared_path(PARAM))
    assert [arrays["weight"].shape for _, arrays in layers] == _v11_shapes()
    assert all(sorted(arrays) == ["bias", "weight"] for _, arrays in layers)
    assert sum(a.size for _, d in layers for a in d.values()) == 1_235_496
    assert all(a.dtype == np.float32 for _, d in layers for a in d.values())


def test_real_weights_are_exact_float16():
    for _, arrays in ncnn.read(shared_path(PARAM)):
        weight = arrays["weight"]
        np.testing.assert_array_equal(weight.astype(np.float16).astype(np.float32), weight)
        assert np.abs(weight).max() > 0.1


def test_real_matches_a_straightforward_parse():
    """Offsets by hand: per conv, 4-byte tag + 2 bytes per weight + 4 bytes per bias."""
    param = shared_path(PARAM)
    data = param.with_suffix(".bin").read_bytes()
    expected, offset = {}, 0
    for line in param.read_text().splitlines():
        if line.startswith("Convolution"):
            name = line.split()[1]
            out, size = (int(re.search(rf" {k}=(\d+)", line).group(1)) for k in (0, 6))
            assert data[offset : offset + 4] == bytes.fromhex("476b3001")
            weight = np.frombuffer(data, "<f2", size, offset + 4)
            bias = np.frombuffer(data, "<f4", out, offset + 4 + 2 * size)
            expected[name] = weight, bias
            offset += 4 + 2 * size + 4 * out
    assert offset == len(data)
    layers = dict(ncnn.read(param))
    for name in ["convrelu_0", "convrelu_2", "convrelu_3", "convrelu_20", "convrelu_25"]:
        weight, bias = expected[name]
        np.testing.assert_array_equal(layers[name]["weight"].reshape(-1), weight)
        np.testing.assert_array_equal(layers[name]["bias"], bias)


def test_real_order_follows_the_concat_inputs(real_copy):
    names = [name for name, _ in ncnn.read(real_copy)]
    assert names[1:4] == ["convrelu_1", "convrelu_3", "convrelu_2"]  # squeeze, 1x1, 3x3
    _edit(real_copy, r"(cat_0\s+2 1) 6 7 ", r"\1 7 6 ")
    names = [name for name, _ in ncnn.read(real_copy)]
    assert names[1:4] == ["convrelu_1", "convrelu_2", "convrelu_3"]


def test_read_param_fields():
    layers = ncnn.read_param(shared_path(PARAM))
    conv = layers[1]
    assert (conv.type, conv.name, conv.inputs, conv.outputs) == (
        "Convolution",
        "convrelu_0",
        ["in0"],
        ["1"],
    )
    assert conv.params[0] == 64 and conv.params[6] == 1728 and conv.params[3] == 2
    summary = ncnn.graph_summary(layers)
    assert summary["inputs"] == ["in0"] and summary["outputs"] == ["out0"]
    assert summary["types"]["Convolution"] == 26 and summary["blobs"] == 57


# A tiny model: the 3x3 branch is listed (and stored) before the 1x1 branch, the Concat takes
# the 1x1 first; float32 and float16 tags; odd float16 counts (padded to 4 bytes); no bias;
# an InnerProduct; an array param.
TINY = """7767517
7 8
Input            in     0 1 data
Convolution      sq     1 1 data s 0=1 1=1 5=1 6=3 -23310=2,1.5,2e-1
Split            sp     1 2 s s1 s2
Convolution      e3     1 1 s1 a 0=1 1=3 11=3 4=1 5=1 6=9
Convolution      e1     1 1 s2 b 0=3 1=1 5=0 6=3
Concat           cat    2 1 b a c
InnerProduct     fc     1 1 c out 0=2 1=1 2=8
"""


def _tiny(tmp_path: Path, param: str = TINY, tail: bytes = b"") -> tuple[Path, dict]:
    rng = np.random.default_rng(1)
    arrays = {
        "sq": (rng.normal(size=(1, 3, 1, 1)), rng.normal(size=1)),
        "e3": (rng.normal(size=(1, 1, 3, 3)), rng.normal(size=1)),
        "e1": (rng.normal(size=(3, 1, 1, 1)), None),
        "fc": (rng.normal(size=(2, 4)), rng.normal(size=2)),
    }
    arrays = {k: (w.astype(np.float16).astype(np.float32), b) for k, (w, b) in arrays.items()}
    f16, f32 = ncnn.TAG_FLOAT16.to_bytes(4, "little"), bytes(4)
    chunks = []
    for name, tag in [("sq", f32), ("e3", f16), ("e1", f16), ("fc", f32)]:
        weight, bias = arrays[name]
        dtype = "<f2" if tag == f16 else "<f4"
        data = weight.astype(dtype).tobytes()
        chunks += [tag, data, bytes(-len(data) % 4)]  # odd float16 counts are padded
        chunks += [] if bias is None else [bias.astype("<f4").tobytes()]
    (tmp_path / "tiny.param").write_text(param)
    (tmp_path / "tiny.bin").write_bytes(b"".join(chunks) + tail)
    return tmp_path / "tiny.param", arrays


def test_tiny_model(tmp_path):
    param, arrays = _tiny(tmp_path)
    layers = ncnn.read(param)
    assert [name for name, _ in layers] == ["sq", "e1", "e3", "fc"]
    for name, got in layers:
        weight, bias = arrays[name]
        np.testing.assert_array_equal(got["weight"], weight)
        if bias is None:
            assert list(got) == ["weight"]
        else:
            np.testing.assert_allclose(got["bias"], bias, rtol=1e-7)
    assert ncnn.read_param(param)[1].params[10] == [1.5, 0.2]


def test_bin_path_can_be_given(tmp_path):
    param, _ = _tiny(tmp_path)
    moved = tmp_path / "elsewhere.bin"
    (tmp_path / "tiny.bin").rename(moved)
    assert len(ncnn.read(param, moved)) == 4


def test_missing_bin_names_the_expected_path(tmp_path):
    param, _ = _tiny(tmp_path)
    (tmp_path / "tiny.bin").unlink()
    assert "not found" in _fails(tmp_path / "tiny.bin", param)


def test_wrong_magic(tmp_path):
    param, _ = _tiny(tmp_path, TINY.replace("7767517", "7767518"))
    assert "7767517" in _fails(param)


@pytest.mark.parametrize(
    "edits, why",
    [
        ({"7 8\n": "8 8\n"}, "8 layers"),
        ({"7 8\n": "7 9\n"}, "9 blobs"),
        ({"7 8\n": "7\n"}, "layer_count blob_count"),
        ({"sp     1 2 s s1 s2": "sp 1 2 s s1"}, "line 5"),
        ({"0=1 1=1 5=1": "0=1 1=x 5=1"}, "line 4"),
        ({"0=1 1=1 5=1": "0=1 1 5=1"}, "line 4"),
        ({"-23310=2,": "-23310=3,"}, "line 4"),
        ({"e1     1 1 s2 b": "e1     1 1 s3 b", "7 8\n": "7 9\n"}, "no producer"),
        ({"e1     1 1 s2 b": "e1     1 1 c b"}, "cycle"),
        ({"7767517\n": "7767517 1\n"}, "7767517"),
    ],
)
def test_malformed_param(tmp_path, edits, why):
    text = TINY
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    param, _ = _tiny(tmp_path, text)
    assert why in _fails(param)


def test_weight_data_size_not_a_multiple(tmp_path):
    param, _ = _tiny(tmp_path, TINY.replace("6=9", "6=10"))
    assert "not a multiple of 9" in _fails(param)


def test_weight_data_size_too_large(tmp_path):
    param, _ = _tiny(tmp_path, TINY.replace("6=9", "6=18"))
    _fails(tmp_path / "tiny.bin", param)


def test_unsupported_layer_type(tmp_path):
    param, _ = _tiny(tmp_path, TINY.replace("Convolution      e1", "ConvolutionDepthWise e1"))
    assert "ConvolutionDepthWise" in _fails(param)


def test_trailing_bytes(tmp_path):
    param, _ = _tiny(tmp_path, tail=b"\0" * 4)
    assert "4 bytes left over" in _fails(tmp_path / "tiny.bin", param)


@pytest.mark.parametrize("cut", [2, 30, 100, -1])
def test_truncated_real_bin(real_copy, cut):
    path = real_copy.with_suffix(".bin")
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    assert "truncated" in _fails(path, real_copy)


@pytest.mark.parametrize(
    "tag, why", [(ncnn.TAG_INT8, "int8 tag 0x000D4B38"), (0x12345678, "unknown tag 0x12345678")]
)
def test_bad_tag_names_it_and_the_layer(real_copy, tag, why):
    path = real_copy.with_suffix(".bin")
    data = bytearray(path.read_bytes())
    offset = 4 + 2 * 1728 + 4 * 64  # the second conv, convrelu_1
    assert data[offset : offset + 4] == ncnn.TAG_FLOAT16.to_bytes(4, "little")
    data[offset : offset + 4] = tag.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    message = _fails(path, real_copy)
    assert why in message and "convrelu_1" in message


def test_real_wrong_weight_data_size(real_copy):
    _edit(real_copy, "6=1728", "6=3456")  # still a multiple of 64*3*3: 6 input channels
    _fails(real_copy.with_suffix(".bin"), real_copy)
