"""ExecuTorch .pte files (XNNPACK delegate) run by executorch.runtime agree with the module.

Every file is run by ExecuTorch's own Python runtime: directly (``Runtime.load_program``) or
through ``ExecuTorchModel``, which is that runtime behind the project's module interface. int8
files are calibrated on imagenet-sample (ImageNet train images), never on imagenet-val, where
they are measured.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, shared_path

import squeezenet
from squeezenet.cli import main
from squeezenet.data.datasets import labelled_folder
from squeezenet.data.transforms import Preprocess, load_image
from squeezenet.inference.backends import open_file, optimize
from squeezenet.inference.export import export
from squeezenet.inference.pipeline import run, topk_accuracy
from squeezenet.inference.quantize import calibration_images

if importlib.util.find_spec("executorch") is None:
    pytest.skip("ExecuTorch is not installed (pip install 'squeezenet[executorch]')", mark=True)

from squeezenet.inference.executorch_runtime import ExecuTorchModel  # noqa: E402

WEIGHTS = {
    "v1_0": "weights/deep-compression/compressed_SqueezeNet.net",
    "v1_1": "weights/ncnn/squeezenet_v1.1.ncnn.param",
    "chainer": "weights/chainer-seed-format/weights.npz",
}
VAL, SAMPLE, PHOTOS = "data/imagenet-val", "data/imagenet-sample", "data/photos"
INT8_IMAGES = 200


def build(name: str) -> torch.nn.Module:
    if name == "bypass":
        torch.manual_seed(0)
        return squeezenet.create_model("squeezenet1_0_complex_bypass")
    return squeezenet.load_model(shared_path(WEIGHTS[name]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("pte")


@pytest.fixture(scope="module")
def models() -> dict:
    return {}


@pytest.fixture(scope="module")
def files(folder, models):
    """``get(name, int8)``: the model and its .pte, exported once for the whole module."""
    cache = {}

    def get(name: str, int8: bool = False):
        if name not in models:
            models[name] = build(name)
        if (name, int8) not in cache:
            path = folder / f"{name}{'.int8' if int8 else ''}.pte"
            options = (
                {"calibration": shared_path(SAMPLE), "num_images": INT8_IMAGES} if int8 else {}
            )
            export(models[name], path, "executorch", int8=int8, progress=False, **options)
            cache[name, int8] = path
        return models[name], cache[name, int8]

    return get


def photos(model) -> torch.Tensor:
    paths = sorted(shared_path(PHOTOS).iterdir())
    return torch.stack([model.weights_info.preprocess(load_image(p)) for p in paths])


def run_pte(path, x: torch.Tensor) -> torch.Tensor:
    """Logits from ExecuTorch's runtime alone, one image at a time (any batch bound)."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")
    return torch.cat([method.execute([x[i : i + 1]])[0].clone() for i in range(len(x))])


def pte_meta(path) -> dict:
    from executorch.runtime import Runtime

    return json.loads(Runtime.get().load_program(path).load_method("weights_info").execute([])[0])


@pytest.mark.parametrize("name", ["v1_0", "v1_1", "chainer", "bypass"])
def test_fp32_pte_gives_the_module_logits_on_real_photos(files, name):
    model, path = files(name)
    x = photos(model)
    with torch.no_grad():
        expected = model(x)
    scale = float(expected.abs().max())
    assert float((run_pte(path, x) - expected).abs().max()) < 1e-4 * scale
    # the same through the module interface, in batches over the program's bound of 8
    runner = open_file(path, "auto")
    batch = torch.cat([x] * (9 // len(x) + 1))[:9]
    with torch.no_grad():
        assert float((runner(batch) - model(batch)).abs().max()) < 1e-4 * scale


@pytest.mark.parametrize("name", ["v1_0", "v1_1", "chainer"])
def test_metadata_travels_inside_the_program(files, name):
    model, path = files(name)
    info, meta = model.weights_info, pte_meta(path)
    assert (meta["arch"], meta["classes"]) == (info.arch, info.classes)
    assert Preprocess.from_dict(meta["preprocess"]) == info.preprocess
    loaded = ExecuTorchModel(path).weights_info
    assert (loaded.arch, loaded.classes, loaded.class_ids) == (
        info.arch,
        info.classes,
        info.class_ids,
    )
    assert loaded.preprocess == info.preprocess and loaded.file_format == "executorch"
    assert not ExecuTorchModel(path).int8


def val_logits(runners: list, model) -> tuple[list[np.ndarray], np.ndarray]:
    """Logits of each runner on imagenet-val (the images decoded once), and the labels."""
    preprocess = model.weights_info.preprocess
    data = labelled_folder(shared_path(VAL), preprocess.pixels, model.weights_info.class_ids)
    classes = model.weights_info.num_classes

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([r(x) for r in runners], 1)

    logits, skipped = run(forward, data, normalize=preprocess.normalize, progress=False, workers=0)
    assert not skipped and len(data) == 650
    return [logits[:, k * classes : (k + 1) * classes] for k in range(len(runners))], np.array(
        data.labels
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v1_0", "v1_1"])
def test_imagenet_val_accuracy_fp32_equal_and_int8_within_a_point(files, name):
    model, fp32 = files(name)
    _, int8 = files(name, int8=True)
    runners = [model, ExecuTorchModel(fp32), ExecuTorchModel(int8)]
    (eager, by_fp32, by_int8), labels = val_logits(runners, model)
    acc = [topk_accuracy(out, labels) for out in (eager, by_fp32, by_int8)]
    print(name, [(round(a["top1"] * 100, 2), round(a["top5"] * 100, 2)) for a in acc])
    assert acc[1]["top1"] == acc[0]["top1"] and acc[1]["top5"] == acc[0]["top5"]
    assert abs(acc[2]["top1"] - acc[1]["top1"]) <= 0.01, acc
    assert "quantization" in pte_meta(int8) and ExecuTorchModel(int8).int8
    if name == "v1_1":
        assert int8.stat().st_size <= 1.5e6, int8.stat().st_size


@pytest.mark.slow
def test_int8_backend_is_the_int8_file_calibrated_on_the_same_images(files):
    model, int8 = files("v1_1", int8=True)
    images = calibration_images(
        shared_path(SAMPLE), model.weights_info.preprocess, INT8_IMAGES, progress=False
    )
    x = photos(model)
    assert torch.equal(optimize(model, "executorch-int8", images)(x), ExecuTorchModel(int8)(x))
    with torch.no_grad():
        expected = model(x)
    error = (optimize(model, "executorch")(x) - expected).abs().max()
    assert float(error) < 1e-4 * float(expected.abs().max())


def test_cli_exports_and_predicts_with_a_pte(files, folder, capsys):
    model, _ = files("v1_1")
    path, photo = folder / "cli.pte", shared_path(PHOTOS) / "chelsea.png"
    weights = str(shared_path(WEIGHTS["v1_1"]))
    assert main(["export", "--weights", weights, "--format", "executorch", "-o", str(path)]) == 0
    assert "squeezenet1_1 as executorch" in capsys.readouterr().out
    assert main(["predict", "--weights", str(path), str(photo), "--json", "--topk", "3"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    with torch.no_grad():
        expected = model(model.weights_info.preprocess(load_image(photo))[None])[0]
    assert [t["index"] for t in top] == expected.topk(3).indices.tolist()
    args = ["export", "--weights", weights, "--format", "executorch", "--int8", "-o", str(path)]
    assert main(args) == 2 and "--calibration" in capsys.readouterr().err
    args = ["predict", "--weights", str(path), str(photo), "--backend", "eager"]
    assert main(args) == 2 and "executorch backends" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_damaged_pte_is_one_line_and_exit_2(files, folder, damage):
    _, path = files("v1_1")
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[8:64] = bytes(56)  # the flatbuffer's header and root tables
    bad = folder / f"{damage}.pte"
    bad.write_bytes(bytes(data))
    photo = shared_path(PHOTOS) / "chelsea.png"
    command = [sys.executable, "-m", "squeezenet", "predict", "--weights", str(bad), str(photo)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(bad) in result.stderr and "Traceback" not in result.stderr
