"""The .pt2 (torch.export) and .onnx deploy targets, each run by its own runtime.

Four models: v1.0 (Deep Compression, Caffe preprocessing at 227), v1.1 (ncnn), the Chainer
layout (BatchNorm Fires) and a seeded random complex-bypass v1.0 with BatchNorm whose running
statistics are not the identity. ``torch.export.load`` and ``onnxruntime.InferenceSession`` run
the files, never this package's wrappers, except where ``load_model`` is what is tested.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import shared_path

import squeezenet
from squeezenet.cli import main
from squeezenet.data.transforms import load_image
from squeezenet.errors import FormatError
from squeezenet.inference.export import export
from squeezenet.weights.formats.onnx import metadata
from squeezenet.weights.formats.pt2 import META_FILE, ExportedModel

WEIGHTS = {
    "v1_0": "weights/deep-compression/compressed_SqueezeNet.net",
    "v1_1": "weights/ncnn/squeezenet_v1.1.ncnn.param",
    "chainer": "weights/chainer-seed-format/weights.npz",
}
VAL = "data/imagenet-val"
TOLERANCE = 1e-4  # of the largest logit
BYPASS = "squeezenet1_0_complex_bypass"


def bypass_model() -> torch.nn.Module:
    """A random complex-bypass v1.0 with BatchNorm Fires and random running statistics."""
    torch.manual_seed(0)
    model = squeezenet.create_model(BYPASS, batch_norm=True)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    return model.eval()


def load(name: str) -> torch.nn.Module:
    return bypass_model() if name == "bypass" else squeezenet.load_model(shared_path(WEIGHTS[name]))


@pytest.fixture(scope="module", params=["v1_0", "v1_1", "chainer", "bypass"])
def exported(request, tmp_path_factory):
    """(model, .pt2 path, .onnx path), both written by ``export``."""
    model = load(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    export(model, folder / "model.pt2", "pt2")
    export(model, folder / "model.onnx", "onnx", dynamic_batch=True)
    return model, folder / "model.pt2", folder / "model.onnx"


def photos(model: torch.nn.Module) -> torch.Tensor:
    files = sorted(shared_path("data/photos").iterdir())
    return torch.stack([model.weights_info.preprocess(load_image(f)) for f in files])


def run_pt2(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.export.load(path).module()(x)


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    runner = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(runner.run(["logits"], {"input": x.numpy()})[0])


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.abs().max())


def test_pt2_and_onnx_give_the_eager_logits_on_photos(exported):
    model, pt2, onnx_file = exported
    x = photos(model)
    assert len(x) >= 5
    with torch.no_grad():
        eager = model(x)
    for batch in (x[:1], x):
        expected = eager[: len(batch)]
        assert relative_error(run_pt2(pt2, batch), expected) < TOLERANCE
        assert relative_error(run_onnx(onnx_file, batch), expected) < TOLERANCE


def test_exported_graphs_have_no_batch_norm(exported):
    model, pt2, onnx_file = exported
    targets = [str(n.target) for n in torch.export.load(pt2).graph.nodes if n.op == "call_function"]
    assert any("conv2d" in t for t in targets)
    assert not any("batch_norm" in t for t in targets), targets
    ops = {n.op_type for n in onnx.load(onnx_file).graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops
    with_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert with_bn == (model.weights_info.arch in ("squeezenet1_0_chainer", BYPASS))


def test_metadata_round_trip(exported):
    model, pt2, onnx_file = exported
    info = model.weights_info
    meta = json.loads(json.dumps(info.to_meta()))  # as JSON has it: lists for tuples
    extra = {META_FILE: ""}
    torch.export.load(pt2, extra_files=extra)
    assert json.loads(extra[META_FILE]) == meta
    assert metadata(onnx.load(onnx_file)) == meta
    loaded = squeezenet.load_model(pt2)
    assert isinstance(loaded, ExportedModel)
    got = loaded.weights_info
    assert (got.arch, got.model_kwargs, got.num_classes) == (
        info.arch, info.model_kwargs, info.num_classes,
    )  # fmt: skip
    assert got.preprocess == info.preprocess
    if info.classes:
        assert got.classes == info.classes
    else:  # a random model has no names; every loader gives a 1000-class file ImageNet's
        assert len(got.classes) == 1000 and got.classes[0] == "tench"
    assert got.file_format == "pt2" and got.source == str(pt2)
    x = photos(model)[:2]
    with torch.no_grad():
        assert relative_error(loaded(x), model(x)) < TOLERANCE


def val_images(model: torch.nn.Module) -> tuple[list[Path], list[int]]:
    root = shared_path(VAL)
    rows = [r.split(",") for r in (root / "labels.csv").read_text().split()[1:]]
    return [root / f for f, _ in rows], [int(y) for _, y in rows]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v1_0", "v1_1"])
def test_top1_on_imagenet_val_equals_eager(name, tmp_path):
    """All 650 labelled images: each runtime picks eager's class for every image."""
    model = load(name)
    export(model, tmp_path / "m.pt2", "pt2")
    export(model, tmp_path / "m.onnx", "onnx", dynamic_batch=True)
    program = torch.export.load(tmp_path / "m.pt2").module()
    runner = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    files, labels = val_images(model)
    assert len(files) == 650
    preprocess = model.weights_info.preprocess
    top1 = {"eager": [], "pt2": [], "onnx": []}
    for start in range(0, len(files), 50):
        x = torch.stack([preprocess(load_image(f)) for f in files[start : start + 50]])
        with torch.no_grad():
            top1["eager"] += model(x).argmax(1).tolist()
            top1["pt2"] += program(x).argmax(1).tolist()
        top1["onnx"] += runner.run(None, {"input": x.numpy()})[0].argmax(1).tolist()
    assert top1["pt2"] == top1["eager"] and top1["onnx"] == top1["eager"]
    accuracy = np.mean(np.array(top1["eager"]) == np.array(labels))
    assert accuracy > 0.65  # the real weights: 70.5% (v1.0) and 73.1% (v1.1) here


def test_cli_exports_pt2_and_predicts_and_evaluates_with_it(tmp_path, capsys):
    weights = shared_path(WEIGHTS["v1_1"])
    out = tmp_path / "v11.pt2"
    assert main(["export", "--weights", str(weights), "--format", "pt2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "squeezenet1_1 as pt2, input (N, 3, 224, 224) after torchvision preprocessing" in printed
    photo = shared_path("data/photos/coffee.png")
    results = []
    for spec in (weights, out):
        argv = ["predict", str(photo), "--weights", str(spec), "--json", "--topk", "3"]
        assert main([*argv, "--no-progress"]) == 0
        results.append(json.loads(capsys.readouterr().out.splitlines()[0]))
    labels = [[p["label"] for p in r["top"]] for r in results]
    assert labels[0] == labels[1] and labels[0][0] == "espresso"
    data = subset(tmp_path, 30)
    scores = []
    for spec in (weights, out):
        argv = ["evaluate", str(data), "--weights", str(spec), "--backend", "eager", "--json"]
        assert main(argv) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0] == scores[1] and scores[0]["n"] == 30


def subset(tmp_path: Path, n: int) -> Path:
    """A labels.csv folder naming the first ``n`` imagenet-val images where they lie."""
    root = shared_path(VAL)
    rows = (root / "labels.csv").read_text().splitlines()
    lines = [rows[0]] + [f"{root / f},{y}" for f, y in (r.split(",") for r in rows[1 : n + 1])]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.fixture(scope="module")
def pt2_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("seed") / "v11.pt2"
    export(load("v1_1"), path, "pt2")
    return path.read_bytes()


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[: len(d) // 2], "not a readable .pt2 archive (BadZipFile)"),
        (lambda d: flip(d, len(d) // 3), "damaged archive member"),
    ],
    ids=["truncated", "corrupted"],
)
def test_cli_damaged_pt2_is_one_line_and_exit_2(pt2_bytes, damage, message, tmp_path):
    """In a subprocess: torch logs tracebacks through its own handlers, not through capsys."""
    path = tmp_path / "bad.pt2"
    path.write_bytes(damage(pt2_bytes))
    photo = shared_path("data/photos/coffee.png")
    result = subprocess.run(
        [sys.executable, "-m", "squeezenet", "predict", str(photo), "--weights", str(path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"squeezenet predict: error: {path}: {message}")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def rewrite(data: bytes, name_ends: str, change) -> bytes:
    """The archive with the member whose name ends with ``name_ends`` passed through ``change``."""
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            target.writestr(item, change(content) if item.filename.endswith(name_ends) else content)
    return out.getvalue()


def test_pickled_payloads_are_refused_before_torch_unpickles_them(pt2_bytes, tmp_path):
    """torch.export.load would torch.load(weights_only=False) a payload marked as pickled."""

    def pickled(content: bytes) -> bytes:
        table = json.loads(content)
        next(iter(table["config"].values()))["use_pickle"] = True
        return json.dumps(table).encode()

    path = tmp_path / "pickled.pt2"
    path.write_bytes(rewrite(pt2_bytes, "model_weights_config.json", pickled))
    with pytest.raises(FormatError, match=r"pickled.pt2: weights 'features.0.weight' is not a"):
        squeezenet.load_model(path)
    path.write_bytes(rewrite(pt2_bytes, "README", lambda c: c))  # rewritten, nothing changed
    assert isinstance(squeezenet.load_model(path), ExportedModel)
