"""Caffe prototxt parsing, caffemodel reading/writing, and damaged input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import shared_path

from squeezenet.errors import FormatError
from squeezenet.weights.formats import caffe, deep_compression

DC = "weights/deep-compression/"
V10_FIRES = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]


def v10_shapes() -> list[tuple[int, int, int, int]]:
    """SqueezeNet v1.0's 26 conv weight shapes, written out by hand."""
    shapes, channels = [(96, 3, 7, 7)], 96
    for squeeze, expand in V10_FIRES:
        shapes += [(squeeze, channels, 1, 1), (expand, squeeze, 1, 1), (expand, squeeze, 3, 3)]
        channels = 2 * expand
    return shapes + [(1000, 512, 1, 1)]


def assert_same(a: list, b: list) -> None:
    assert [name for name, _ in a] == [name for name, _ in b]
    for (name, x), (_, y) in zip(a, b, strict=True):
        assert x.keys() == y.keys(), name
        for key in x:
            assert x[key].dtype == y[key].dtype and x[key].shape == y[key].shape, (name, key)
            assert x[key].tobytes() == y[key].tobytes(), (name, key)


@pytest.mark.parametrize("name", ["SqueezeNet_deploy.prototxt", "SqueezeNet_trainval.prototxt"])
def test_real_prototxt_conv_shapes_and_padding(name):
    net = caffe.read_prototxt(shared_path(DC + name))
    assert net["name"] == "FireNet"
    shapes = caffe.conv_shapes(net)
    assert [s for _, s in shapes] == v10_shapes()
    assert shapes[0][0] == "conv1" and shapes[1][0] == "fire2/conv1x1_1"
    pads = {spec.name: spec.pad for spec in caffe.conv_specs(net)}
    assert pads["conv_final"] == (1, 1) and pads["conv1"] == (0, 0)
    assert pads["fire2/conv3x3_2"] == (1, 1) and pads["fire2/conv1x1_2"] == (0, 0)
    assert caffe.conv_specs(net)[0].stride == (2, 2)
    pool = next(x for x in caffe.prototxt_layers(net) if x["name"] == "pool_final")
    assert pool["pooling_param"] == {"pool": "AVE", "global_pooling": True}


def test_real_prototxt_details():
    deploy = caffe.read_prototxt(shared_path(DC + "SqueezeNet_deploy.prototxt"))
    assert deploy["input_dim"] == [1, 3, 227, 227]
    train = caffe.read_prototxt(shared_path(DC + "SqueezeNet_trainval.prototxt"))
    data = caffe.prototxt_layers(train)[:2]
    assert [d["include"]["phase"] for d in data] == ["TRAIN", "TEST"]
    assert data[0]["transform_param"]["mean_value"] == [104, 117, 123]
    assert data[0]["transform_param"]["crop_size"] == 227
    assert data[1]["data_param"]["source"] == "/ssd/dataset/ilsvrc12_val_lmdb/"
    accuracy = next(x for x in caffe.prototxt_layers(train) if x["name"] == "accuracy_top5")
    assert accuracy["include"] == {} and accuracy["accuracy_param"] == {"top_k": 5}


def test_parse_prototxt_syntax():
    text = """
    # a comment
    name: 'tiny' input: "data"  # trailing comment
    input_shape { dim: [1, 2, 5, 5] }
    layers { name: "c" type: CONVOLUTION bottom: "data" top: "c"
             convolution_param: { num_output: 4 kernel_h: 3 kernel_w: 1 pad: 1 pad: 0 group: 2 } }
    layer < name: "s\\"q" type: "Concat" bottom: "c" bottom: "c" top: "cat" >
    layer { name: "p" type: "Convolution" bottom: "cat" top: "p"
            convolution_param { num_output: 3 kernel_size: 2 stride: 2 } }
    values: -1.5e-3 values: 7 values: 0x10 values: inf values: 2.5f flag: false
    """
    net = caffe.parse_prototxt(text)
    assert net["name"] == "tiny" and net["input_shape"] == {"dim": [1, 2, 5, 5]}
    assert net["values"][:3] == [-1.5e-3, 7, 16] and net["values"][3] == float("inf")
    assert net["values"][4] == 2.5 and net["flag"] is False
    assert [x["name"] for x in caffe.prototxt_layers(net)] == ['s"q', "p", "c"]
    specs = caffe.conv_specs(caffe.parse_prototxt(text.replace("layers {", "layer {")))
    assert [(s.name, s.shape) for s in specs] == [("c", (4, 1, 3, 1)), ("p", (3, 8, 2, 2))]
    assert specs[0].pad == (1, 0) and specs[0].group == 2 and specs[1].stride == (2, 2)


@pytest.mark.parametrize(
    "text",
    [
        "layer { name: 'a' ",
        "layer { name: 'a' } }",
        "layer { a { b: 1 }",
        "layer < name: 'a' }",
        "name: 'unterminated",
        "name:",
        "name 'x'",
        "a: [1, 2",
        "{ }",
        "a: 1 ~",
        "{" * 10000,
    ],
)
def test_bad_prototxt(text, tmp_path):
    with pytest.raises(FormatError, match="^prototxt: "):
        caffe.parse_prototxt(text)
    path = tmp_path / "bad.prototxt"
    path.write_text(text)
    with pytest.raises(FormatError, match=f"^{path}: "):
        caffe.read_prototxt(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("layer { name: 'c' type: 'Convolution' bottom: 'nope' top: 'c' }", "unknown input blob"),
        ("layer { name: 'c' type: 'Convolution' top: 'c' }", "missing field 'convolution_param'"),
        (
            "layer { name: 'c' type: 'Convolution' convolution_param { kernel_size: 3 } }",
            "num_output",
        ),
        ("layer { name: 'c' type: 'Convolution' convolution_param: 5 }", "bad or missing field"),
        (
            "layer { type: 'Convolution' convolution_param { num_output: 1 } }",
            "bad convolution_param",
        ),
        ("layer { type: 'Convolution' convolution_param { num_output: 2 group: 2 } }", "bad conv"),
        ("layer { name: 'c' type: 'Convolution' convolution_param { num_output: x } }", "literal"),
        ("layer: 3", "not a { ... } block"),
    ],
)
def test_conv_shapes_bad_net(text, message):
    with pytest.raises(FormatError, match=f"^prototxt: .*{message}"):
        caffe.conv_shapes(caffe.parse_prototxt(text))


@pytest.fixture(scope="module")
def real_layers():
    """The real Deep Compression SqueezeNet v1.0 weights, decoded."""
    net = caffe.read_prototxt(shared_path(DC + "SqueezeNet_deploy.prototxt"))
    return deep_compression.read(
        shared_path(DC + "compressed_SqueezeNet.net"), caffe.conv_shapes(net)
    )


@pytest.mark.parametrize("legacy", [False, True])
def test_round_trip_real_weights(real_layers, tmp_path, legacy):
    path = tmp_path / "squeezenet.caffemodel"
    caffe.write_caffemodel(path, real_layers, legacy=legacy)
    back = caffe.read_caffemodel(path)
    assert [p["weight"].shape for _, p in back] == v10_shapes()
    assert_same(back, real_layers)
    assert not list(tmp_path.glob(".*tmp"))


def random_net() -> list:
    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    bn = {"weight": f32(4), "bias": f32(4), "running_mean": f32(4), "running_var": f32(4) ** 2}
    return [
        ("conv", {"weight": f32(4, 3, 3, 3), "bias": f32(4)}),
        ("bn", bn),
        ("stats", {"running_mean": f32(4), "running_var": f32(4)}),
        ("nobias", {"weight": f32(2, 4, 1, 1)}),
        ("fc", {"weight": f32(5, 8), "bias": f32(5)}),
        ("fc1", {"weight": f32(1, 8), "bias": f32(1)}),
    ]


def test_round_trip_batchnorm_and_inner_product(tmp_path):
    path = tmp_path / "net.caffemodel"
    caffe.write_caffemodel(path, random_net(), net_name="net")
    assert_same(caffe.read_caffemodel(path), random_net())


def test_round_trip_legacy_types(tmp_path):
    layers = [x for x in random_net() if "running_mean" not in x[1]]
    path = tmp_path / "net.caffemodel"
    caffe.write_caffemodel(path, layers, legacy=True, types={"nobias": "Deconvolution"})
    assert_same(caffe.read_caffemodel(path), layers)
    with pytest.raises(FormatError, match="BatchNorm has no V1"):
        caffe.write_caffemodel(path, random_net(), legacy=True)
    assert_same(caffe.read_caffemodel(path), layers)  # the failed write left the file alone


# An encoder written apart from the module's, emitting what the module never does: unpacked
# floats, legacy dims, V1 layers, fixed32/fixed64 and varint fields to skip.


def varint(n: int) -> bytes:
    groups, n = [n % (1 << 64) & 0x7F], n % (1 << 64) >> 7
    while n:
        groups.append(n & 0x7F)
        n >>= 7
    return bytes([g | 0x80 for g in groups[:-1]] + groups[-1:])


def tag(field: int, wire: int) -> bytes:
    return varint(field * 8 + wire)


def ld(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def fixed32(field: int, value: float) -> bytes:
    return tag(field, 5) + struct.pack("<f", value)


def legacy_blob(values, num=1, channels=1, height=1, width=None) -> bytes:
    """Legacy dims and unpacked floats, one fixed32 field per value."""
    dims = (num, channels, height, len(values) if width is None else width)
    head = b"".join(tag(field, 0) + varint(d) for field, d in enumerate(dims, 1))
    return head + b"".join(fixed32(5, v) for v in values)


def shaped_blob(dims, values, packed: bool = True) -> bytes:
    if packed:
        shape = ld(1, b"".join(map(varint, dims)))
        data = ld(5, struct.pack(f"<{len(values)}f", *values))
    else:
        shape = b"".join(tag(1, 0) + varint(d) for d in dims)
        data = b"".join(fixed32(5, v) for v in values)
    return ld(7, shape) + data


def v1_layer(name: bytes, kind: int, *blobs: bytes, extra: bytes = b"") -> bytes:
    return ld(2, tag(5, 0) + varint(kind) + ld(4, name) + extra + b"".join(ld(6, b) for b in blobs))


def layer(name: bytes, kind: bytes, *blobs: bytes, extra: bytes = b"") -> bytes:
    return ld(100, ld(1, name) + ld(2, kind) + b"".join(ld(7, b) for b in blobs) + extra)


def test_varint_helper():
    assert varint(1) == b"\x01" and varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"


def test_hand_built_legacy_unpacked(tmp_path):
    weight = [0.5, -1.25, 3.0, 2.0, 7.5, -0.125]
    skipped = ld(2, b"data") + ld(3, b"c1") + ld(10, tag(1, 0) + varint(3)) + fixed32(7, 1.0)
    conv = v1_layer(
        b"c1", 4, legacy_blob(weight, 3, 2, 1, 1), legacy_blob([0.25, 0.5, -1.0]), extra=skipped
    )
    fc = v1_layer(b"fc", 14, legacy_blob(weight, height=2, width=3))  # (1, 1, out, in)
    mean, var = shaped_blob([2], [4.0, 8.0], packed=False), shaped_blob([2], [2.0, 6.0])
    unknown = tag(95, 1) + struct.pack("<q", -1) + ld(106, b"\x08\x01")  # fixed64, message
    bn = layer(b"bn", b"BatchNorm", mean, var, shaped_blob([1], [2.0]), extra=unknown)
    scale = layer(b"sc", b"Scale", shaped_blob([2], [1.5, 2.5]))
    header = ld(1, b"tiny") + tag(4, 0) + varint(3)  # name, input_dim
    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(header + conv + v1_layer(b"relu", 18) + fc + bn + scale)
    layers = caffe.read_caffemodel(path)
    assert [name for name, _ in layers] == ["c1", "fc", "bn"]
    conv, fc, bn = (p for _, p in layers)
    np.testing.assert_array_equal(conv["weight"], np.array(weight, np.float32).reshape(3, 2, 1, 1))
    np.testing.assert_array_equal(conv["bias"], [0.25, 0.5, -1.0])
    np.testing.assert_array_equal(fc["weight"], np.array(weight, np.float32).reshape(2, 3))
    assert "bias" not in fc and conv["weight"].dtype == np.float32
    np.testing.assert_array_equal(bn["running_mean"], [2.0, 4.0])  # divided by the factor 2
    np.testing.assert_array_equal(bn["running_var"], [1.0, 3.0])
    np.testing.assert_array_equal(bn["weight"], [1.5, 2.5])


def written(tmp_path, data: bytes):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(data)
    return path


def one_layer(blob: bytes, kind: bytes = b"Convolution") -> bytes:
    return layer(b"x", kind, blob)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "no layers with weights"),
        (ld(1, b"just a name"), "no layers with weights"),
        (b"\xff" * 20, "varint longer"),
        (b"\x08" + b"\xff" * 5, "truncated varint"),
        (b"\x0a\x10abc", "past the end"),
        (b"\x0b\x00", "wire type 3"),
        (b"\x00\x01", "field number 0"),
        (ld(100, b"\x3a\x05ab"), "past the end"),
        (one_layer(shaped_blob([2, 3], range(5))), "holds 5 values"),
        (one_layer(legacy_blob([1.0, 2.0], width=3)), "holds 2 values"),
        (one_layer(ld(7, ld(1, varint(1 << 40) * 3)) + ld(5, b"\0" * 8)), "holds 2 values"),
        (one_layer(ld(7, ld(1, varint(-2))) + ld(5, b"")), "negative"),
        (one_layer(ld(5, b"\0" * 7)), "holds"),
        (one_layer(tag(5, 0) + varint(3)), "wire type 0"),
        (one_layer(legacy_blob([1.0]), b"PReLU"), "unsupported layer type 'PReLU'"),
        (ld(100, ld(1, b"\xff\xfe")), "not UTF-8"),
        (v1_layer(b"c", 4, legacy_blob([1.0])) * 2 + b"\x12", "truncated varint"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_bad_caffemodel(tmp_path, data, message):
    path = written(tmp_path, data)
    with pytest.raises(FormatError, match=f"^{path}: .*{message}"):
        caffe.read_caffemodel(path)


def test_truncated_and_random_caffemodel(tmp_path, real_layers):
    good = tmp_path / "good.caffemodel"
    caffe.write_caffemodel(good, real_layers[:3])
    data = good.read_bytes()
    for cut in [1, 2, 3, 7, 40, len(data) // 3, len(data) // 2, len(data) - 1]:
        with pytest.raises(FormatError, match="^" + str(tmp_path)):
            caffe.read_caffemodel(written(tmp_path, data[:cut]))
    rng = np.random.default_rng(1)
    for size in [1, 16, 1000, 100_000]:
        with pytest.raises(FormatError):
            caffe.read_caffemodel(written(tmp_path, rng.bytes(size)))
    with pytest.raises(FormatError, match="cannot read"):
        caffe.read_caffemodel(tmp_path / "missing.caffemodel")


def test_write_rejects_unknown_params(tmp_path):
    path = tmp_path / "x.caffemodel"
    with pytest.raises(FormatError, match="takes weight and bias"):
        caffe.write_caffemodel(
            path, [("a", {"weight": np.zeros((1, 1, 1, 1)), "gamma": np.ones(1)})]
        )
    with pytest.raises(FormatError, match="no V1 layer type"):
        caffe.write_caffemodel(
            path, [("a", {"weight": np.zeros(2)})], types={"a": "Scale"}, legacy=True
        )
    assert not path.exists()


def test_double_data(tmp_path):
    blob = ld(7, ld(1, varint(2))) + ld(8, struct.pack("<2d", 0.1, -2.0))
    ((name, params),) = caffe.read_caffemodel(written(tmp_path, one_layer(blob, b"Scale")))
    assert name == "x" and params["weight"].dtype == np.float64
    assert params["weight"].tolist() == [0.1, -2.0]
