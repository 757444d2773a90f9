"""The ncnn target: files run by the real ncnn runtime give the module's logits; our reader reads
them back to the same model; the ncnn backend; bad files end in one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared_path

import squeezenet
from squeezenet.cli import main
from squeezenet.data.datasets import labelled_folder
from squeezenet.data.transforms import load_image
from squeezenet.errors import SqueezeNetError
from squeezenet.inference.backends import installed_backends, optimize
from squeezenet.inference.export import export, input_shape
from squeezenet.inference.pipeline import run
from squeezenet.models.registry import list_models

ncnn = pytest.importorskip(
    "ncnn", reason="the ncnn wheel runs the exported files: pip install 'squeezenet[ncnn]'"
)

DC = "weights/deep-compression/compressed_SqueezeNet.net"
V11 = "weights/ncnn/squeezenet_v1.1.ncnn.param"
CHAINER = "weights/chainer-seed-format/weights.npz"
MODELS = ["v1_0", "v1_1", "chainer", "complex_bypass"]
BASELINES = ("zfnet", "alexnet")  # 60 M parameters each: a 240 MB .bin
TAG_FLOAT16 = b"\x47\x6b\x30\x01"  # 0x01306B47, little-endian


def perturbed(arch: str, **kwargs) -> torch.nn.Module:
    """``arch`` with random weights and, where it has BatchNorms, non-trivial statistics."""
    torch.manual_seed(0)
    model = squeezenet.create_model(arch, **kwargs)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def build(name: str) -> torch.nn.Module:
    if name == "complex_bypass":
        return perturbed("squeezenet1_0_complex_bypass", num_classes=10)  # no class names
    return squeezenet.load_model(shared_path({"v1_0": DC, "v1_1": V11, "chainer": CHAINER}[name]))


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    """(model, {False: fp32 .param, True: fp16 .param}, the photos preprocessed for it)."""
    model = build(request.param)
    folder = tmp_path_factory.mktemp(f"ncnn-{request.param}")
    paths = {fp16: folder / f"model{'16' if fp16 else '32'}.param" for fp16 in (False, True)}
    for fp16, path in paths.items():
        export(model, path, "ncnn", fp16=fp16)
    return model, paths, photos(model)


def photos(model: torch.nn.Module) -> torch.Tensor:
    files = sorted(shared_path("data/photos").iterdir())
    return torch.stack([model.weights_info.preprocess(load_image(f)) for f in files])


def ncnn_logits(param, x: torch.Tensor) -> torch.Tensor:
    """The files run by the ncnn wheel itself in fp32, image by image."""
    net = ncnn.Net()
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    net.opt.use_bf16_storage = False
    net.opt.num_threads = torch.get_num_threads()
    assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
    out = []
    for image in x.numpy():
        mat = ncnn.Mat(image.shape[2], image.shape[1], image.shape[0])
        np.array(mat, copy=False)[...] = image  # a Mat that owns its data, filled in place
        extractor = net.create_extractor()
        extractor.input("input", mat)
        status, logits = extractor.extract("logits")
        assert status == 0
        out.append(np.array(logits).reshape(-1))
    return torch.from_numpy(np.stack(out))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.abs().max())


def test_ncnn_runs_the_files_with_the_module_logits_on_real_photos(exported):
    model, paths, x = exported
    with torch.no_grad():
        eager = model(x)
    fp32, fp16 = ncnn_logits(paths[False], x), ncnn_logits(paths[True], x)
    assert relative_error(fp32, eager) < 1e-4  # measured 2e-7 to 2e-6
    assert relative_error(fp16, eager) < 2e-3  # measured 1e-4 to 5e-4
    assert torch.equal(fp32.argmax(1), eager.argmax(1))
    fp32_bin, fp16_bin = (p.with_suffix(".bin").read_bytes() for p in (paths[False], paths[True]))
    assert fp16_bin.startswith(TAG_FLOAT16) and fp32_bin.startswith(bytes(4))
    assert 0.45 < len(fp16_bin) / len(fp32_bin) < 0.55


@pytest.mark.parametrize("fp16", [False, True])
def test_our_reader_reads_the_files_back_to_the_same_model(exported, fp16):
    model, paths, x = exported
    back = squeezenet.load_model(paths[fp16])
    info, back_info = model.weights_info, back.weights_info
    assert (back_info.arch, back_info.model_kwargs) == (info.arch, info.model_kwargs)
    assert back_info.preprocess == info.preprocess and back_info.classes == info.classes
    assert back_info.file_format == "ncnn"
    x = x[:3]
    with torch.no_grad():
        logits = back(x)
        expected = ncnn_logits(paths[True], x) if fp16 else model(x)
    # the same fp32 weights (BatchNorms folded, then put back as identities: 3e-7 measured);
    # fp16: the same rounded weights that ncnn runs
    assert relative_error(logits, expected) < (1e-4 if fp16 else 1e-6)


def test_fp16_export_of_the_ncnn_v1_1_file_reproduces_its_bin_byte_for_byte(tmp_path):
    """The shared file is torchvision's weights written by ncnn's own tools (pnnx)."""
    export(squeezenet.load_model(shared_path(V11)), tmp_path / "v11.param", "ncnn", fp16=True)
    original = shared_path(V11).with_suffix(".bin").read_bytes()
    assert (tmp_path / "v11.bin").read_bytes() == original


def test_a_caffe_preprocessed_model_comes_back_caffe_preprocessed(tmp_path, capsys):
    out = tmp_path / "v10.param"
    argv = ["export", "--weights", str(shared_path(DC)), "--format", "ncnn", "-o", str(out)]
    assert main([*argv, "--fp16"]) == 0
    assert "squeezenet1_0 as ncnn, input (1, 3, 227, 227) after caffe" in capsys.readouterr().out
    meta = json.loads((tmp_path / "v10.param.json").read_text())
    assert meta["preprocess"]["bgr"] and meta["model_kwargs"] == {"classifier_padding": 1}
    back = squeezenet.load_model(out)
    assert back.weights_info.preprocess.name == "caffe"
    assert back.classifier[1].padding == (1, 1)
    assert "4=1" in [line for line in out.read_text().splitlines() if "classifier.1" in line][0]


@pytest.mark.parametrize(
    "arch",
    [pytest.param(a, marks=pytest.mark.slow) if a in BASELINES else a for a in list_models()],
)
def test_every_architecture_exports_and_runs_in_ncnn(arch, tmp_path):
    """Random weights, BatchNorm statistics perturbed: every layer kind the registry uses."""
    model = perturbed(arch)
    export(model, tmp_path / "m.param", "ncnn")
    x = torch.randn(2, *input_shape(model))
    with torch.no_grad():
        assert relative_error(ncnn_logits(tmp_path / "m.param", x), model(x)) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("weights", [DC, V11])
def test_ncnn_top1_equals_eager_on_all_of_imagenet_val(weights):
    model = squeezenet.load_model(shared_path(weights))
    ncnn_forward = optimize(model, "ncnn")
    info = model.weights_info
    dataset = labelled_folder(
        shared_path("data/imagenet-val"), info.preprocess.pixels, info.class_ids,
        draft_size=info.preprocess.resize,
    )  # fmt: skip

    def both(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(x), ncnn_forward(x)], 1)

    logits, skipped = run(both, dataset, normalize=info.preprocess.normalize, progress=False)
    assert len(logits) == 650 and not skipped
    eager, ncnn_out = logits[:, :1000], logits[:, 1000:]
    assert (eager.argmax(1) == ncnn_out.argmax(1)).all()
    assert np.abs(eager - ncnn_out).max() < 1e-4 * np.abs(eager).max()


def test_ncnn_backend_is_installed_and_gives_the_module_logits():
    assert "ncnn" in installed_backends()
    model = squeezenet.load_model(shared_path(V11))
    x = photos(model)[:3]
    forward = optimize(model, "ncnn")
    with torch.no_grad():
        assert relative_error(forward(x), model(x)) < 1e-4
    with pytest.raises(SqueezeNetError, match=r"expected a float32 batch of shape \(N, 3, 224"):
        forward(torch.zeros(1, 3, 227, 227))


def test_cli_evaluates_through_the_ncnn_backend(tmp_path, capsys):
    root = shared_path("data/imagenet-val")
    rows = (root / "labels.csv").read_text().splitlines()
    lines = [rows[0]] + [f"{root / f},{y}" for f, y in (r.split(",") for r in rows[1:31])]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    argv = ["evaluate", str(tmp_path), "--weights", str(shared_path(DC)), "--json"]
    assert main([*argv, "--backend", "ncnn"]) == 0
    with_ncnn = json.loads(capsys.readouterr().out)
    assert main([*argv, "--backend", "eager"]) == 0
    assert with_ncnn == json.loads(capsys.readouterr().out) and with_ncnn["n"] == 30


def test_what_ncnn_cannot_express_is_one_line_naming_the_layer(tmp_path):
    model = perturbed("zfnet")
    model.features[3] = torch.nn.LocalResponseNorm(4)
    with pytest.raises(SqueezeNetError, match="features.3: LocalResponseNorm of even size 4"):
        export(model, tmp_path / "m.param", "ncnn")
    with pytest.raises(SqueezeNetError, match="x.onnx: an ncnn export is named NAME.param"):
        export(perturbed("squeezenet1_1"), tmp_path / "x.onnx", "ncnn")
    assert not list(tmp_path.iterdir())


def damage(tmp_path, which: str, how: str) -> str:
    """An fp32 v1.1 export with one of its files damaged; returns the path to pass."""
    path = tmp_path / "v11.param"
    export(squeezenet.load_model(shared_path(V11)), path, "ncnn")
    target = {"param": path, "bin": path.with_suffix(".bin"), "json": tmp_path / "v11.param.json"}
    data = target[which].read_bytes()
    if how == "truncate":
        target[which].write_bytes(data[: len(data) // 2])
    elif how == "corrupt" and which == "param":
        target[which].write_text(target[which].read_text().replace(" 6=1728 ", " 6=1729 "))
    elif how == "corrupt":
        target[which].write_bytes(data.replace(b'"arch"', b'"arcx"'))
    return str(target["bin"] if how == "give" else path)


@pytest.mark.parametrize(
    ("which", "how", "message"),
    [
        ("param", "truncate", "v11.param: header says 47 layers, found"),
        ("bin", "truncate", "v11.bin: truncated in layer"),
        ("param", "corrupt", "features.0: weight_data_size 1729 is not a multiple of 576"),
        ("json", "truncate", "v11.param.json: damaged metadata (not JSON)"),
        ("json", "corrupt", "v11.param.json: damaged metadata (KeyError: 'arch')"),
        ("bin", "give", "v11.bin: an ncnn .bin holds only the weights; pass the .param"),
    ],
)
def test_cli_damaged_files_end_in_one_line_and_exit_2(tmp_path, capsys, which, how, message):
    weights = damage(tmp_path, which, how)
    photo = str(shared_path("data/photos/cat.jpg"))
    assert main(["predict", "--weights", weights, photo]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
