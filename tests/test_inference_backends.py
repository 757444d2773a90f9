"""Backends agree with the module on real weights; bad batches and bad backends are refused."""

from __future__ import annotations

import multiprocessing

import pytest
import torch
from conftest import shared_path
from PIL import ImageOps

import squeezenet
from squeezenet.data.transforms import load_image
from squeezenet.errors import SqueezeNetError
from squeezenet.inference.backends import OnnxModel, optimize
from squeezenet.inference.bench import bench, format_table
from squeezenet.inference.quantize import calibration_images

WEIGHTS = {
    "v1_0": "weights/deep-compression/compressed_SqueezeNet.net",
    "v1_1": "weights/ncnn/squeezenet_v1.1.ncnn.param",
}


@pytest.fixture(scope="module", params=sorted(WEIGHTS))
def model(request):
    return squeezenet.load_model(shared_path(WEIGHTS[request.param]))


def images(model, n: int, start: int = 0) -> torch.Tensor:
    """``n`` imagenet-val images preprocessed for ``model``."""
    files = sorted((shared_path("data/imagenet-val") / "images").iterdir())[start : start + n]
    return torch.stack([model.weights_info.preprocess(load_image(f)) for f in files])


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.abs().max())


@pytest.mark.parametrize("backend", ["auto", "eager", "channels_last", "onnxruntime"])
def test_fp32_backends_give_the_module_logits(model, backend):
    x = images(model, 6)
    with torch.no_grad():
        expected = model(x)
    forward = optimize(model, backend, example=x[:1])
    assert relative_error(forward(x), expected) < 1e-4
    assert relative_error(forward(x[2:3]), expected[2:3]) < 1e-4  # another batch size


@pytest.mark.slow
def test_compile_backend_gives_the_module_logits(shared):
    model = squeezenet.load_model(shared(WEIGHTS["v1_1"]))  # compiling takes ~30 s on 2 cores
    x = images(model, 2)
    with torch.no_grad():
        expected = model(x)
    assert relative_error(optimize(model, "compile", example=x)(x), expected) < 1e-4


def test_cuda_backend_without_a_gpu_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = squeezenet.create_model("squeezenet1_1")
    with pytest.raises(SqueezeNetError, match="^backend 'cuda' needs a CUDA GPU; none is visible$"):
        optimize(model, "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_backend_gives_the_module_logits_on_the_cpu():
    model = squeezenet.load_model(shared_path(WEIGHTS["v1_1"]))
    photo = load_image(shared_path("data/photos/cat.jpg"))
    x = torch.stack([model.weights_info.preprocess(p) for p in (photo, ImageOps.mirror(photo))])
    with torch.no_grad():
        expected = model(x)
    forward = optimize(model, "cuda")
    logits = forward(x)
    assert logits.device.type == "cpu" and relative_error(logits, expected) < 1e-3
    assert relative_error(forward(x[1:]), expected[1:]) < 1e-3  # another batch size
    with pytest.raises(SqueezeNetError, match="expected a float32 batch of shape"):
        forward(x.double())


def test_int8_backend_calibrated_on_real_images_keeps_the_top_class(model):
    train = shared_path("data/imagenette/train")
    calibration = calibration_images(train, model.weights_info.preprocess, 20, progress=False)
    x = images(model, 40)
    with torch.no_grad():
        expected = model(x).argmax(1)
    top = optimize(model, "onnxruntime-int8", example=calibration)(x).argmax(1)
    assert (top == expected).float().mean() >= 0.85


def test_int8_backend_needs_calibration_images(model):
    with pytest.raises(SqueezeNetError, match="onnxruntime-int8 calibrates on real images"):
        optimize(model, "onnxruntime-int8")


@pytest.mark.parametrize("backend", ["eager", "channels_last", "onnxruntime"])
def test_a_batch_of_the_wrong_shape_or_type_is_refused(model, backend):
    forward = optimize(model, backend)
    side = model.weights_info.preprocess.crop
    expected = rf"expected a float32 batch of shape \(N, 3, {side}, {side}\)"
    for bad in [
        torch.zeros(2, 3, side + 3, side),
        torch.zeros(3, side, side),
        torch.zeros(2, 1, side, side),
        torch.zeros(0, 3, side, side),
        torch.zeros(2, 3, side, side, dtype=torch.float64),
    ]:
        with pytest.raises(SqueezeNetError, match=expected + ", got .*" + str(tuple(bad.shape))):
            forward(bad)


def test_unknown_backend_is_refused(model):
    with pytest.raises(SqueezeNetError, match="unknown backend 'tensorrt'; choose from auto"):
        optimize(model, "tensorrt")


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(SqueezeNetError, match="model.onnx: not an ONNX model"):
        OnnxModel(fake)


def squeezenet1_1_macs(side: int = 224, classes: int = 1000) -> int:
    """SqueezeNet v1.1's multiply-accumulates for one image, by hand from its layer table."""

    def pool(n: int) -> int:  # 3x3 max pool, stride 2, ceil mode
        return -(-(n - 3) // 2) + 1

    side = (side - 3) // 2 + 1  # conv1: 3x3, stride 2, 64 filters
    macs, channels, side = side * side * 64 * 3 * 9, 64, pool(side)
    fires = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]
    for n, (squeeze, expand) in enumerate(fires):
        side = pool(side) if n in (2, 4) else side  # max pools after fire3 and fire5
        macs += side * side * squeeze * (channels + expand + 9 * expand)  # squeeze, 1x1, 3x3
        channels = 2 * expand
    return macs + side * side * classes * channels  # conv10


def test_bench_times_backends_side_by_side_with_floor_and_memory():
    result = bench("squeezenet1_1", batches=[1, 2], backends=["eager", "onnxruntime"],
                   repeats=2, warmup=1, progress=False)  # fmt: skip
    rows = {(r["backend"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(b, n) for b in ("eager", "onnxruntime") for n in (1, 2)}
    macs = squeezenet1_1_macs()
    assert macs == result["macs"] == 349_151_936  # torchvision labels it 0.35 GFLOPS
    floor = result["floor_ops_per_s"][torch.get_num_threads()]
    assert set(floor) == {"torch fp32", "torch int8", "onnxruntime fp32", "onnxruntime int8"}
    fp32 = max(floor["torch fp32"], floor["onnxruntime fp32"])  # FLOP/s, 2 per MAC
    for (_, batch), r in rows.items():
        assert r["seconds"] > 0 and r["peak_rss_mb"] > 50
        assert r["images_per_s"] == pytest.approx(batch / r["seconds"])
        assert r["vs_eager"] == pytest.approx(rows[("eager", batch)]["seconds"] / r["seconds"])
        assert r["floor_seconds"] == pytest.approx(2 * macs * batch / fp32)
        assert r["of_floor"] * r["seconds"] == pytest.approx(2 * macs * batch / fp32)
    table = format_table(result)
    assert "0.349 GMAC per image" in table
    assert sum(line.startswith(("| eager |", "| onnxruntime |")) for line in table.split("\n")) == 4


def test_bench_reports_a_backend_that_fails_and_leaves_no_process(tmp_path):
    with pytest.raises(SqueezeNetError, match="backend onnxruntime-int8: .*missing: calibration"):
        bench("squeezenet1_1", backends=["eager", "onnxruntime-int8"], progress=False,
              calibration=tmp_path / "missing")  # fmt: skip
    assert multiprocessing.active_children() == []


def test_bench_refuses_an_unknown_backend():
    with pytest.raises(SqueezeNetError, match="unknown backend 'fast'"):
        bench("squeezenet1_1", backends=["eager", "fast"], progress=False)
