"""The OpenVINO backends agree with the module and with ONNX Runtime; without it, one line."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import shared_path

import squeezenet
from squeezenet.cli import main
from squeezenet.data.transforms import load_image
from squeezenet.errors import SqueezeNetError
from squeezenet.inference.backends import installed_backends, open_onnx, optimize
from squeezenet.inference.quantize import calibration_images, quantize

WEIGHTS = {
    "v1_0": "weights/deep-compression/compressed_SqueezeNet.net",
    "v1_1": "weights/ncnn/squeezenet_v1.1.ncnn.param",
    "chainer": "weights/chainer-seed-format/weights.npz",  # BatchNorm Fires, folded
}
VAL = "data/imagenet-val"
TRAIN = "data/imagenette/train"

needs_openvino = pytest.mark.skipif(
    "openvino" not in installed_backends(),
    reason="OpenVINO is not installed (pip install 'squeezenet[openvino]'; 'make test' does)",
)


@pytest.fixture(scope="module", params=sorted(WEIGHTS))
def model(request):
    return squeezenet.load_model(shared_path(WEIGHTS[request.param]))


def images(model, n: int) -> torch.Tensor:
    files = sorted((shared_path(VAL) / "images").iterdir())[:n]
    return torch.stack([model.weights_info.preprocess(load_image(f)) for f in files])


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.abs().max())


@needs_openvino
def test_openvino_gives_the_module_logits_in_true_fp32(model):
    x = images(model, 5)
    with torch.no_grad():
        expected = model(x)
    forward = optimize(model, "openvino")
    assert relative_error(forward(x), expected) < 1e-4  # bf16 would be about 1e-2
    assert relative_error(forward(x[1:2]), expected[1:2]) < 1e-4  # another batch size


@pytest.fixture(scope="module", params=["v1_0", "v1_1"])
def trained_model(request):
    """The real ImageNet weights (the shared seed-format file is untrained: no top class)."""
    return squeezenet.load_model(shared_path(WEIGHTS[request.param]))


@needs_openvino
def test_openvino_int8_calibrates_on_real_images_and_keeps_the_top_class(trained_model):
    model = trained_model
    calibration = calibration_images(
        shared_path(TRAIN), model.weights_info.preprocess, 20, progress=False
    )
    x = images(model, 40)
    with torch.no_grad():
        expected = model(x).argmax(1)
    top = optimize(model, "openvino-int8", example=calibration)(x).argmax(1)
    assert (top == expected).float().mean() >= 0.85


@needs_openvino
def test_openvino_int8_runs_a_quantized_file_like_onnxruntime(tmp_path):
    v11 = squeezenet.load_model(shared_path(WEIGHTS["v1_1"]))
    path = tmp_path / "v11.int8.onnx"
    quantize(v11, shared_path(TRAIN), path, num_images=20, progress=False)
    x = images(v11, 20)
    by_ort = optimize(open_onnx(path, "onnxruntime-int8"), "onnxruntime-int8")(x)
    by_openvino = open_onnx(path, "openvino-int8")
    assert by_openvino.runtime == "openvino"
    out = optimize(by_openvino, "openvino-int8")(x)
    # the same int8 graph; the two libraries round the requantization differently
    assert relative_error(out, by_ort) < 0.05
    assert (out.argmax(1) == by_ort.argmax(1)).float().mean() >= 0.95
    # an OnnxModel opened for ONNX Runtime is handed to OpenVINO by optimize
    assert relative_error(optimize(open_onnx(path, "auto"), "openvino-int8")(x), out) < 1e-6


def subset(tmp_path, n: int):
    """A labels.csv folder naming the first ``n`` imagenet-val images where they lie."""
    root = shared_path(VAL)
    rows = (root / "labels.csv").read_text().splitlines()
    lines = [rows[0]] + [f"{root / f},{y}" for f, y in (r.split(",") for r in rows[1 : n + 1])]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return str(tmp_path)


@needs_openvino
def test_cli_evaluates_with_openvino(tmp_path, capsys):
    v10, data = str(shared_path(WEIGHTS["v1_0"])), subset(tmp_path, 60)
    for backend in ("onnxruntime", "openvino"):
        assert main(["evaluate", data, "--weights", v10, "--backend", backend, "--json"]) == 0
    ort, openvino = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert openvino == ort and ort["n"] == 60  # the same top-1 and top-5


def test_without_openvino_the_backends_say_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes 'import openvino' fail
    v11 = squeezenet.load_model(shared_path(WEIGHTS["v1_1"]))
    for backend in ("openvino", "openvino-int8"):
        with pytest.raises(SqueezeNetError, match=r"pip install 'squeezenet\[openvino\]'"):
            optimize(v11, backend)
    weights = str(shared_path(WEIGHTS["v1_1"]))
    code = main(["evaluate", str(shared_path(VAL)), "--weights", weights, "--backend", "openvino"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "pip install 'squeezenet[openvino]'" in err
