"""Loading and saving through every format with a writer; bad input gives one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import squeezenet
from squeezenet.data.transforms import get_preset, load_image
from squeezenet.errors import FormatError, SqueezeNetError
from squeezenet.models import build_model
from squeezenet.weights.entries import ENTRIES
from squeezenet.weights.layers import assign_layers, model_layers

DC = "weights/deep-compression/compressed_SqueezeNet.net"


def random_model(arch="squeezenet1_1", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = squeezenet.create_model(arch, **kwargs)
    for buffer_name, buffer in model.named_buffers():  # non-trivial BatchNorm statistics
        if "running" in buffer_name:
            buffer.uniform_(0.5, 1.5)
    return model


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    skip = {k for k in sa if k.endswith("num_batches_tracked")}
    assert set(sa) == set(sb)
    for k in set(sa) - skip:
        assert torch.equal(sa[k], sb[k]), k  # bit-identical


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("arch", ["squeezenet1_0", "squeezenet1_1", "squeezenet1_0_bn", "alexnet"])
def test_state_dict_formats_round_trip_bit_identical(tmp_path, arch, suffix):
    model = random_model(arch, num_classes=10)
    path = tmp_path / f"m{suffix}"
    squeezenet.save_model(model, path)
    loaded = squeezenet.load_model(path)
    assert loaded.weights_info.arch == arch and loaded.weights_info.num_classes == 10
    assert_same_state(model, loaded)


def test_torchvision_keys_load_unchanged(tmp_path):
    """A torchvision-layout .pth (plain dict of tensors) loads with strict key matching."""
    model = random_model("squeezenet1_0")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "squeezenet1_0-tv.pth")
    loaded = squeezenet.load_model(tmp_path / "squeezenet1_0-tv.pth")
    assert list(loaded.state_dict()) == list(state)
    assert_same_state(model, loaded)
    assert loaded.weights_info.preprocess.name == "torchvision"


def test_safetensors_keeps_metadata(tmp_path):
    model = random_model("squeezenet1_1", num_classes=3)
    model.weights_info.classes = ["ant", "bee", "cat"]
    squeezenet.save_model(model, tmp_path / "m.safetensors")
    info = squeezenet.load_model(tmp_path / "m.safetensors").weights_info
    assert info.classes == ["ant", "bee", "cat"] and info.label(2) == "cat"


@pytest.mark.parametrize("legacy", [False, True])
def test_caffemodel_round_trip_reproduces_caffe_logits(shared, tmp_path, legacy):
    """Real decoded v1.0 weights -> .caffemodel -> load with the real prototxt: same logits."""
    from squeezenet.weights.formats import caffe

    original = squeezenet.load_model(shared(DC))
    path = tmp_path / "squeezenet_v1.0.caffemodel"
    caffe.write_caffemodel(path, model_layers(original), legacy=legacy)
    prototxt = shared("weights/deep-compression/SqueezeNet_deploy.prototxt")
    loaded = squeezenet.load_model(path, prototxt=prototxt)
    assert loaded.weights_info.model_kwargs == {"classifier_padding": 1}
    assert loaded.weights_info.preprocess.name == "caffe"
    assert_same_state(original, loaded)
    photos = [shared(f"data/photos/{p}") for p in ("chelsea.png", "coffee.png")]
    x = torch.stack([loaded.weights_info.preprocess(load_image(p)) for p in photos])
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))


def test_chainer_writer_round_trip(shared, tmp_path):
    original = squeezenet.load_model(shared("weights/chainer-seed-format/weights.npz"))
    squeezenet.save_model(original, tmp_path / "back.npz")
    assert_same_state(original, squeezenet.load_model(tmp_path / "back.npz"))


def test_convert_cli_writes_loadable_safetensors(shared, tmp_path):
    from squeezenet.cli import main

    out = tmp_path / "v1_0.safetensors"
    assert main(["convert", str(shared(DC)), "-o", str(out)]) == 0
    converted = squeezenet.load_model(out)
    info = converted.weights_info
    assert (info.arch, info.preprocess.name, info.entry) == (
        "squeezenet1_0", "caffe", "squeezenet1_0.deep_compression"
    )  # fmt: skip
    assert info.model_kwargs == {"classifier_padding": 1}
    assert_same_state(squeezenet.load_model(shared(DC)), converted)


def test_create_model_resets_classifier_for_new_classes(tmp_path):
    squeezenet.save_model(random_model("squeezenet1_1"), tmp_path / "m.safetensors")
    model = squeezenet.create_model(
        "squeezenet1_1", weights=tmp_path / "m.safetensors", num_classes=4
    )
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 4)
    with pytest.raises(SqueezeNetError, match="holds squeezenet1_1 weights, not squeezenet1_0"):
        squeezenet.create_model("squeezenet1_0", weights=tmp_path / "m.safetensors")


# --- bad input: each a one-line error naming the file -----------------------------------------


def test_missing_path_and_unknown_name():
    with pytest.raises(SqueezeNetError, match="no such file, and not a known weights name"):
        squeezenet.load_model("/nonexistent/w.safetensors")


def test_named_weights_not_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path))
    with pytest.raises(SqueezeNetError, match="squeezenet download squeezenet1_1.torchvision"):
        squeezenet.load_model("squeezenet1_1.torchvision")


def test_hash_mismatch_of_cached_named_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path))
    entry = ENTRIES["squeezenet1_0.deep_compression"]
    (tmp_path / entry.filename).write_bytes(b"\0" * 1000)
    with pytest.raises(FormatError, match="does not match squeezenet1_0.deep_compression"):
        squeezenet.load_model(entry.name)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".npz", ".onnx", ".caffemodel"])
def test_truncated_files_of_every_writable_format(tmp_path, suffix):
    model = random_model("squeezenet1_0_chainer" if suffix == ".npz" else "squeezenet1_0")
    if suffix in (".npz", ".caffemodel"):  # what these readers assume: Caffe's input and pad
        model.weights_info.preprocess = get_preset("caffe")
        model.classifier[1].padding = (1, 1)
        model.weights_info.model_kwargs["classifier_padding"] = 1
    path = tmp_path / f"m{suffix}"
    if suffix == ".onnx":
        x = (torch.zeros(1, 3, 227, 227),)  # the weights inside the file, not beside it
        torch.onnx.export(model, x, path, dynamo=True, external_data=False, verbose=False)
    else:
        squeezenet.save_model(model, path)
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) - 7):
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError) as e:
            squeezenet.load_model(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_wrong_architecture_for_the_file(shared, tmp_path):
    """v1.0 Deep-Compression data read with v1.1 shapes (a wrong prototxt) is refused."""
    text = shared("weights/deep-compression/SqueezeNet_deploy.prototxt").read_text()
    (tmp_path / "wrong.prototxt").write_text(text.replace("kernel_size: 7", "kernel_size: 3", 1))
    with pytest.raises(FormatError, match="compressed_SqueezeNet.net"):
        squeezenet.load_model(shared(DC), prototxt=tmp_path / "wrong.prototxt")


def test_state_dict_with_mismatched_shapes(tmp_path):
    state = random_model("squeezenet1_1").state_dict()
    state["features.3.squeeze.weight"] = torch.zeros(8, 64, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(FormatError, match=r"bad.pth: weights do not fit squeezenet1_1"):
        squeezenet.load_model(tmp_path / "bad.pth")


def test_unknown_format(tmp_path):
    (tmp_path / "weights.xyz").write_bytes(b"hello world, not weights")
    with pytest.raises(FormatError, match="cannot tell the weights format"):
        squeezenet.load_model(tmp_path / "weights.xyz")


def test_layers_of_the_wrong_count(tmp_path):
    layers = model_layers(random_model("squeezenet1_1"))
    with pytest.raises(FormatError, match="holds 25 layers but SqueezeNet has 26"):
        assign_layers(build_model("squeezenet1_1"), layers[:-1], "x")
    layers[3] = (layers[3][0], {**layers[3][1], "weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(FormatError, match="has shape"):
        assign_layers(build_model("squeezenet1_1"), layers, "x")


def test_named_weights_carry_their_preprocessing():
    entry = squeezenet.get_weights("squeezenet1_0.deep_compression")
    assert (entry.transforms().crop, entry.transforms().bgr) == (227, True)
    assert squeezenet.get_weights("squeezenet1_1.ncnn").transforms().crop == 224
    with pytest.raises(SqueezeNetError, match="unknown weights"):
        squeezenet.get_weights("resnet50")


def test_exported_onnx_carries_arch_and_preprocessing(shared, tmp_path):
    """An ONNX file from `squeezenet export` rebuilds the module with its Caffe preprocessing."""
    from squeezenet.inference.export import export

    original = squeezenet.load_model(shared(DC))
    export(original, tmp_path / "v10.onnx", "onnx")
    rebuilt = squeezenet.load_model(tmp_path / "v10.onnx")
    info = rebuilt.weights_info
    assert (info.arch, info.preprocess.name, info.model_kwargs) == (
        "squeezenet1_0", "caffe", {"classifier_padding": 1}
    )  # fmt: skip
    assert_same_state(original, rebuilt)


def test_saved_files_get_the_usual_mode_and_a_missing_folder_is_named(tmp_path):
    import os
    import stat

    squeezenet.save_model(random_model(), tmp_path / "m.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o666 & ~umask
    with pytest.raises(SqueezeNetError, match="folder .*nope does not exist"):
        squeezenet.save_model(random_model(), tmp_path / "nope" / "m.safetensors")
