"""BatchNorm folding: the same logits on every BatchNorm architecture, no BatchNorm exported."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import shared_path

import squeezenet
from squeezenet.data.transforms import get_preset, load_image
from squeezenet.inference.backends import optimize
from squeezenet.inference.export.onnx import onnx_model
from squeezenet.inference.fold import batch_norm_fires, fold_batch_norm
from squeezenet.inference.quantize import quantize_onnx
from squeezenet.models import build_model, default_input_size, list_models

BN_ARCHS = [a for a in list_models() if batch_norm_fires(build_model(a))]
VARIANTS = [(a, None) for a in BN_ARCHS] + [
    ("squeezenet1_0_bn", "simple"),  # dense head and bypass together
    ("squeezenet1_1_bn", "complex"),
]


def test_every_batch_norm_architecture_is_covered():
    assert {"squeezenet1_0_bn", "squeezenet1_1_bn", "squeezenet1_0_chainer"} <= set(BN_ARCHS)


def real_images(n: int, arch: str, start: int = 0) -> torch.Tensor:
    """``n`` imagenet-val images at the size ``arch`` was designed for."""
    files = sorted((shared_path("data/imagenet-val") / "images").iterdir())[start : start + n]
    preprocess = get_preset("torchvision").with_size(default_input_size(arch))
    return torch.stack([preprocess(load_image(f)) for f in files])


def model_with_statistics(arch: str, bypass: str | None) -> torch.nn.Module:
    """``arch`` whose BatchNorms hold running statistics of real images and uneven affines."""
    torch.manual_seed(0)
    model = build_model(arch, bypass=bypass) if bypass else build_model(arch)
    for fire in batch_norm_fires(model):
        fire.bn.momentum = None  # a plain average over the batches seen
        fire.bn.weight.data.uniform_(0.5, 2.0)
        fire.bn.bias.data.normal_(0.0, 0.5)
    with torch.no_grad():
        model.train()(real_images(8, arch))
    return model.eval()


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}-{v[1] or 'plain'}")
def case(request):
    arch, bypass = request.param
    model = model_with_statistics(arch, bypass)
    x = real_images(3, arch, start=100)  # images the statistics did not come from
    with torch.no_grad():
        expected = model(x)
    return model, x, expected


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.abs().max())


def test_folding_keeps_the_logits_and_leaves_the_model_alone(case):
    model, x, expected = case
    before = copy.deepcopy(model.state_dict())
    folded = fold_batch_norm(model)
    assert not batch_norm_fires(folded)
    with torch.no_grad():
        assert relative_error(folded(x), expected) < 1e-5
    assert len(batch_norm_fires(model)) == 8  # the original still trains with its BatchNorms
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_exported_graph_has_no_batch_norm_and_the_same_logits(case):
    import onnxruntime as ort

    model, x, expected = case
    proto = onnx_model(model, x)
    ops = {node.op_type for node in proto.graph.node}
    assert "BatchNormalization" not in ops
    runner = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out = runner.run(None, {"input": x.numpy()})[0]
    assert relative_error(torch.from_numpy(out), expected) < 1e-5


@pytest.mark.parametrize("backend", ["eager", "channels_last", "onnxruntime"])
def test_backends_run_the_folded_model(case, backend):
    model, x, expected = case
    assert relative_error(optimize(model, backend, example=x)(x), expected) < 1e-5


def test_int8_graph_quantizes_no_batch_norm(case):
    model, x, _ = case
    quantized = quantize_onnx(onnx_model(model, x), x.numpy())
    ops = [node.op_type for node in quantized.graph.node]
    assert "BatchNormalization" not in ops
    # every convolution, expand ones included, reads int8 weights through a DequantizeLinear
    assert ops.count("Conv") == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def test_chainer_file_folds_exactly_to_chainers_logits(shared):
    """The old repo's file (non-trivial BatchNorm statistics): folded logits are Chainer's."""
    folder = shared("weights/chainer-seed-format")
    model = squeezenet.load_model(folder / "weights.npz")
    x = torch.from_numpy(np.load(folder / "input.npy"))
    expected = torch.from_numpy(np.load(folder / "logits.npy"))
    assert relative_error(optimize(model, "onnxruntime")(x), expected) < 1e-5


