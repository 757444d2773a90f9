"""The format registry: every format has the same interface, detection and writers pick right."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
import torch

import squeezenet
from squeezenet.data.transforms import get_preset
from squeezenet.errors import FormatError
from squeezenet.weights import formats, load
from squeezenet.weights.formats import sqz


@pytest.mark.parametrize("name", formats.FORMATS)
def test_every_format_has_the_interface(name):
    module = formats.get(name)
    assert module.SUFFIXES and all(s == s.lower() and s.startswith(".") for s in module.SUFFIXES)
    assert list(inspect.signature(module.sniff).parameters) == ["head"]
    assert list(inspect.signature(module.load).parameters) == ["path", "hints"]
    assert not hasattr(module, "save") or list(inspect.signature(module.save).parameters) == [
        "path",
        "contents",
    ]


def test_load_py_has_no_format_name_switch():
    """No comparison with a format name and no table keyed by one: the registry decides."""
    tree = ast.parse(inspect.getsource(load))
    compared = {
        node.value
        for test in ast.walk(tree)
        if isinstance(test, ast.Compare | ast.Dict | ast.MatchValue)
        for node in ast.walk(test)
        if isinstance(node, ast.Constant)
    }
    assert not compared & set(formats.FORMATS)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One file per writable format (and .sqz), from the same random v1.0 model."""
    folder = tmp_path_factory.mktemp("written")
    torch.manual_seed(0)
    model = squeezenet.create_model("squeezenet1_0")
    for suffix in (".safetensors", ".pth"):
        squeezenet.save_model(model, folder / f"m{suffix}")
    # the formats without metadata hold what their reader assumes: Caffe's preset (and pad)
    for arch, suffix, kwargs in [
        ("squeezenet1_0", ".caffemodel", {"classifier_padding": 1}),
        ("squeezenet1_0_chainer", ".npz", {}),
    ]:
        caffe_model = squeezenet.create_model(arch, **kwargs)
        caffe_model.weights_info.preprocess = get_preset("caffe")
        squeezenet.save_model(caffe_model, folder / f"m{suffix}")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    sqz.write(folder / "m.sqz", state, model.weights_info.to_meta())
    torch.save(model.state_dict(), folder / "legacy.pth", _use_new_zipfile_serialization=False)
    return folder


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("m.safetensors", "safetensors"),
        ("m.pth", "torchvision"),
        ("legacy.pth", "torchvision"),
        ("m.caffemodel", "caffe"),
        ("m.npz", "chainer"),
        ("m.sqz", "sqz"),
    ],
)
def test_detect_by_suffix_and_by_magic_alone(written, tmp_path, file, expected):
    assert formats.detect(written / file) == expected
    renamed = tmp_path / "weights.bin"  # no suffix to go by: the first bytes decide
    renamed.write_bytes((written / file).read_bytes())
    if expected == "caffe":  # protobuf has no magic bytes
        with pytest.raises(FormatError, match="cannot tell the weights format"):
            formats.detect(renamed)
    else:
        assert formats.detect(renamed) == expected


def test_detect_real_files(shared):
    assert formats.detect(shared("weights/ncnn/squeezenet_v1.1.ncnn.param")) == "ncnn"
    net = shared("weights/deep-compression/compressed_SqueezeNet.net")
    assert formats.detect(net) == "deep_compression"


def test_writer_by_suffix_and_no_other(tmp_path):
    assert formats.writer(tmp_path / "a.PTH") is formats.get("torchvision")
    assert formats.writer(tmp_path / "a.npz") is formats.get("chainer")
    assert formats.writer(tmp_path / "a.caffemodel") is formats.get("caffe")
    assert formats.writer(tmp_path / "a.safetensors") is formats.get("safetensors")
    writable = ".safetensors, .caffemodel, .pth, .pt, .npz"
    assert formats.writable_suffixes() == writable.split(", ")
    refused = {
        "a.weights": f"unknown suffix '.weights'; weights are written as {writable}$",
        "a": f"no suffix; weights are written as {writable}$",
        "a.sqz": "a .sqz \\(sqz\\) is read, not written, as weights: 'squeezenet compress' writes",
        "a.onnx": "a .onnx \\(onnx\\) is read, not written, as weights: 'squeezenet export' writes",
        "a.net": "a .net \\(deep_compression\\) is read, not written, as weights: nothing here",
        "a.param": "a .param \\(ncnn\\) is read, not written, as weights: nothing here",
    }
    for name, message in refused.items():
        with pytest.raises(FormatError, match=message):
            formats.writer(tmp_path / name)


def test_unknown_format_name():
    with pytest.raises(FormatError, match="unsupported format 'keras'; choose from sqz"):
        formats.get("keras")


def test_contents_of_each_kind(written):
    """State-dict formats give ``state``, positional formats ``layers``; never both."""
    hints = formats.Hints()
    for file in ("m.safetensors", "m.pth", "m.sqz"):
        contents = formats.get(formats.detect(written / file)).load(written / file, hints)
        assert contents.layers is None and "features.0.weight" in contents.state
    for file in ("m.caffemodel", "m.npz"):
        contents = formats.get(formats.detect(written / file)).load(written / file, hints)
        assert contents.state is None and len(contents.layers) in (26, 34)
        assert isinstance(contents.layers[0][1]["weight"], np.ndarray)
