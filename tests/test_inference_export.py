"""Exports and int8 files round-trip and agree with the module; the CLI refuses bad input."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from conftest import shared_path

import squeezenet
from squeezenet.cli import main
from squeezenet.data.transforms import load_image
from squeezenet.errors import SqueezeNetError
from squeezenet.inference import backends as backends_module
from squeezenet.inference import quantize as quantize_module
from squeezenet.inference.backends import OnnxModel, open_onnx, optimize
from squeezenet.inference.export import export
from squeezenet.inference.quantize import int16_saturates, quantize
from squeezenet.weights.formats.onnx import metadata

WEIGHTS = {
    "v1_0": "weights/deep-compression/compressed_SqueezeNet.net",
    "v1_1": "weights/ncnn/squeezenet_v1.1.ncnn.param",
}
VAL = "data/imagenet-val"


@pytest.fixture(scope="module", params=sorted(WEIGHTS))
def model(request):
    return squeezenet.load_model(shared_path(WEIGHTS[request.param]))


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    """squeezenet1_1 quantized on 30 Imagenette training images (not the ones evaluated)."""
    path = tmp_path_factory.mktemp("int8") / "v11.int8.onnx"
    v11 = squeezenet.load_model(shared_path(WEIGHTS["v1_1"]))
    assert quantize(v11, shared_path("data/imagenette/train"), path, num_images=30) == 30
    return path


def images(model, n: int) -> torch.Tensor:
    files = sorted((shared_path(VAL) / "images").iterdir())[:n]
    return torch.stack([model.weights_info.preprocess(load_image(f)) for f in files])


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.abs().max())


def subset(tmp_path, n: int):
    """A labels.csv folder naming the first ``n`` imagenet-val images where they lie."""
    root = shared_path(VAL)
    rows = (root / "labels.csv").read_text().splitlines()
    lines = [rows[0]] + [f"{root / f},{y}" for f, y in (r.split(",") for r in rows[1 : n + 1])]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_onnx_export_runs_in_onnxruntime_with_the_module_logits_and_preprocessing(model, tmp_path):
    path = tmp_path / "model.onnx"
    export(model, path, "onnx", dynamic_batch=True)
    info = model.weights_info
    meta = metadata(onnx.load(path))
    assert meta["arch"] == info.arch and meta["preprocess"]["name"] == info.preprocess.name
    assert len(meta["classes"]) == 1000
    runner = OnnxModel(path)
    assert runner.weights_info.preprocess == info.preprocess
    assert runner.weights_info.classes == info.classes and not runner.int8
    x = images(model, 5)
    with torch.no_grad():
        assert relative_error(runner(x), model(x)) < 1e-4
    assert optimize(runner, "auto") is runner
    with pytest.raises(SqueezeNetError, match="model.onnx: an fp32 graph; make an int8 one"):
        optimize(runner, "onnxruntime-int8")
    with pytest.raises(SqueezeNetError, match="only with the onnxruntime and openvino backends"):
        optimize(runner, "channels_last")


def test_onnx_export_without_dynamic_batch_has_batch_1_and_still_runs_batches(model, tmp_path):
    path = tmp_path / "fixed.onnx"
    export(model, path, "onnx")
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, *2 * [model.weights_info.preprocess.crop]]
    x = images(model, 3)
    with torch.no_grad():
        assert relative_error(OnnxModel(path)(x), model(x)) < 1e-4


def test_export_to_a_missing_folder_is_refused_before_any_work(model, tmp_path):
    with pytest.raises(SqueezeNetError, match="folder .*nowhere does not exist"):
        export(model, tmp_path / "nowhere" / "model.onnx")


def test_int8_file_runs_with_its_preprocessing_and_keeps_top1(int8_file):
    runner = OnnxModel(int8_file)
    assert runner.int8
    v11 = squeezenet.load_model(shared_path(WEIGHTS["v1_1"]))
    assert runner.weights_info.preprocess == v11.weights_info.preprocess
    assert "calibration on 30 images" in metadata(onnx.load(int8_file))["quantization"]
    x = images(v11, 60)
    labels = [
        int(r.split(",")[1]) for r in (shared_path(VAL) / "labels.csv").read_text().split()[1:61]
    ]
    with torch.no_grad():
        fp32, int8 = v11(x).argmax(1).numpy(), runner(x).argmax(1).numpy()
    assert (fp32 == int8).mean() >= 0.9
    assert abs((int8 == labels).mean() - (fp32 == labels).mean()) <= 0.05


def test_cli_evaluates_an_int8_file_through_onnxruntime(int8_file, tmp_path, capsys):
    assert main(["evaluate", str(subset(tmp_path, 40)), "--weights", str(int8_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 40 and result["top1"] >= 0.6


def test_cli_quantizes_on_the_fly_with_calibration_images(tmp_path, capsys):
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for f in sorted((shared_path("data/imagenette/train") / "n03425413").iterdir())[:20]:
        (calibration / f.name).symlink_to(f)
    weights = str(shared_path(WEIGHTS["v1_1"]))
    argv = ["evaluate", str(subset(tmp_path, 40)), "--weights", weights, "--json"]
    assert main([*argv, "--backend", "onnxruntime-int8", "--calibration", str(calibration)]) == 0
    int8 = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    fp32 = json.loads(capsys.readouterr().out)
    # at most 2 of the 40 images (compared as counts: 0.75 - 0.7 is 0.05000000000000004)
    assert int8["n"] == 40 and abs(round(40 * int8["top1"]) - round(40 * fp32["top1"])) <= 2


@pytest.mark.parametrize(
    "flags, saturates",
    [
        ("fpu sse2 avx avx2 fma", True),  # Zen 2, Haswell: vpmaddubsw into int16
        ("avx2 avx512f avx512bw", True),  # Skylake-SP: AVX-512 before VNNI
        ("avx2 avx512f avx512_vnni", False),
        ("avx2 avx_vnni", False),
        ("fp asimd asimddp", False),  # ARM
    ],
)
def test_seven_bit_weights_only_where_int16_pairs_saturate(tmp_path, flags, saturates):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert int16_saturates(cpuinfo) is saturates
    assert int16_saturates(tmp_path / "missing") is False


def test_eight_bit_weights_warn_where_int16_sums_saturate(tmp_path, monkeypatch, capsys):
    """Quantized on a VNNI CPU (8 bits) and on one without (7 bits), then run without VNNI."""
    v11 = squeezenet.load_model(shared_path(WEIGHTS["v1_1"]))
    files = {}
    for seven_bits in (False, True):
        monkeypatch.setattr(quantize_module, "int16_saturates", lambda s=seven_bits: s)
        files[seven_bits] = tmp_path / f"{seven_bits}.onnx"
        quantize(v11, shared_path("data/imagenette/train"), files[seven_bits], num_images=10)
    assert "8-bit weights" in metadata(onnx.load(files[False]))["quantization"]
    assert (
        "7-bit (quantized on a CPU without VNNI)"
        in metadata(onnx.load(files[True]))["quantization"]
    )
    capsys.readouterr()
    monkeypatch.setattr(quantize_module, "int16_saturates", lambda: True)
    OnnxModel(files[True])
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(backends_module, "_WARNED_SATURATING", set())
    OnnxModel(files[False]).run_with("onnxruntime")
    assert capsys.readouterr().err == (  # once, not again for the same file in another runtime
        f"warning: {files[False]}: 8-bit int8 weights on a CPU without VNNI, whose int16 sums "
        "saturate (top-1 drops); 'squeezenet quantize' here writes 7-bit ones\n"
    )
    monkeypatch.setattr(quantize_module, "int16_saturates", lambda: False)
    monkeypatch.setattr(backends_module, "_WARNED_SATURATING", set())
    OnnxModel(files[False])
    assert capsys.readouterr().err == ""


def test_an_int8_file_is_not_run_by_a_pytorch_backend(int8_file):
    """The error names every backend that runs an int8 file, and each of them does."""
    with pytest.raises(SqueezeNetError, match="int8 ONNX graph runs only with the backends") as e:
        open_onnx(int8_file, "eager")
    named = str(e.value).split("backends ")[1].split(" (or auto)")[0].split(", ")
    assert named == ["onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8"]
    for backend in ["auto", *named]:
        assert isinstance(open_onnx(int8_file, backend), OnnxModel), backend


def test_cli_export_and_quantize_write_files(tmp_path, capsys):
    weights = str(shared_path(WEIGHTS["v1_1"]))
    out = tmp_path / "v11.onnx"
    assert main(["export", "--weights", weights, "--format", "onnx", "-o", str(out)]) == 0
    assert "squeezenet1_1 as onnx, input (1, 3, 224, 224)" in capsys.readouterr().out
    assert metadata(onnx.load(out))["arch"] == "squeezenet1_1"
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for f in sorted((shared_path("data/imagenette/train") / "n03425413").iterdir())[:8]:
        (calibration / f.name).symlink_to(f)
    int8 = tmp_path / "v11.int8.onnx"
    argv = ["quantize", "--weights", weights, "--calibration", str(calibration), "-o", str(int8)]
    assert main([*argv, "--num-images", "8"]) == 0
    assert capsys.readouterr().out.strip() == f"{int8}: squeezenet1_1 int8, calibrated on 8 images"
    nodes = onnx.load(int8).graph.node
    dequantized = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) == 26 and all(set(c.input[:2]) <= dequantized for c in convs)  # all int8
    v11 = squeezenet.load_model(weights)
    x = images(v11, 8)
    with torch.no_grad():
        fp32 = v11(x)
    quantized = open_onnx(int8, "onnxruntime-int8")(x)
    # measured: 9.9% of the largest logit, the same top-1 on all 8 images
    assert relative_error(quantized, fp32) < 0.15
    assert torch.equal(quantized.argmax(1), fp32.argmax(1))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["quantize", "--calibration", "{tmp}/missing", "-o", "{tmp}/q.onnx"],
         "--calibration: {tmp}/missing: no such file or folder"),
        (["quantize", "--calibration", "{tmp}", "-o", "{tmp}/q.onnx"], "no images found in"),
        (["evaluate", VAL, "--weights", "{tmp}/fake.onnx"], "fake.onnx: not an ONNX model"),
        (["evaluate", VAL, "--backend", "onnxruntime-int8"], "onnxruntime-int8 calibrates on"),
        (["export", "--format", "onnx", "-o", "{tmp}/no/x.onnx"], "does not exist"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "fake.onnx").write_bytes(b"PK\x03\x04 a zip, not an onnx protobuf")
    argv = [a.format(tmp=tmp_path).replace(VAL, str(shared_path(VAL))) for a in argv]
    if "--weights" not in argv:
        argv += ["--weights", str(shared_path(WEIGHTS["v1_1"]))]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(tmp=tmp_path) in err and len(err.splitlines()) == 1, err


def test_the_graph_cache_never_serves_a_changed_model(tmp_path, monkeypatch):
    """A second export of the same network comes from the cache; any changed tensor misses it."""
    from squeezenet.inference.export.onnx import onnx_model

    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path))
    model = squeezenet.create_model("squeezenet1_1", num_classes=10)
    first = onnx_model(model).SerializeToString()
    assert len(list((tmp_path / "onnx").iterdir())) == 1
    assert onnx_model(model).SerializeToString() == first
    with torch.no_grad():
        model.classifier[1].bias[3] += 1.0
    x = torch.rand(2, 3, 224, 224)
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_model(model).SerializeToString())
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert relative_error(torch.from_numpy(logits), model(x)) < 1e-5
    assert len(list((tmp_path / "onnx").iterdir())) == 2
