"""The real pretrained weights: exact logits against an independent forward, accuracy, labels."""

from __future__ import annotations

import math
import shutil
from itertools import accumulate
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import squeezenet
from squeezenet.inference.pipeline import evaluate, predict

DC = "weights/deep-compression/compressed_SqueezeNet.net"
NCNN = "weights/ncnn/squeezenet_v1.1.ncnn.param"
POOLS = {"1_0": (0, 3, 7), "1_1": (0, 2, 4)}  # max pool after conv1 and after these fires


def conv_shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def decode_deep_compression(path: Path, shapes: list[tuple[int, ...]]) -> list[dict]:
    """The test's own reader of Song Han's file, written from the format's description:
    uint32 nz[26], then per layer float32 codebook[256], float32 bias[out], uint8 code[nz],
    uint8 gaps[(nz-1)//2+1] (4-bit, low nibble first); value k sits at cumsum(gap+1)-1."""
    data = path.read_bytes()
    counts = np.frombuffer(data, "<u4", 26).tolist()
    offset, layers = 4 * 26, []
    for shape, nz in zip(shapes, counts, strict=True):
        codebook = np.frombuffer(data, "<f4", 256, offset)
        bias = np.frombuffer(data, "<f4", shape[0], offset + 1024)
        offset += 1024 + 4 * shape[0]
        codes = np.frombuffer(data, "u1", nz, offset)
        packed = np.frombuffer(data, "u1", (nz - 1) // 2 + 1, offset + nz)
        offset += nz + len(packed)
        gaps = [g for byte in packed.tolist() for g in (byte & 0xF, byte >> 4)][:nz]
        positions = [end - 1 for end in accumulate(g + 1 for g in gaps)]
        weight = np.zeros(math.prod(shape))
        weight[positions] = codebook[codes]
        layers.append({"weight": weight.reshape(shape), "bias": bias})
    assert offset == len(data), "the layers must end exactly at the end of the file"
    return layers


def decode_ncnn_bin(path: Path, shapes: list[tuple[int, ...]]) -> list[dict]:
    """The test's own reader of the ncnn .bin: per convolution, in .param order, the tag
    0x01306B47, float16 weights, then float32 biases."""
    data = path.read_bytes()
    offset, layers = 0, []
    for shape in shapes:
        assert np.frombuffer(data, "<u4", 1, offset)[0] == 0x01306B47
        weight = np.frombuffer(data, "<f2", math.prod(shape), offset + 4)
        offset += 4 + weight.nbytes
        bias = np.frombuffer(data, "<f4", shape[0], offset)
        offset += bias.nbytes
        layers.append({"weight": weight.astype(np.float64).reshape(shape), "bias": bias})
    assert offset == len(data), "the layers must end exactly at the end of the file"
    return layers


def functional_forward(layers, x: torch.Tensor, version: str, conv10_pad: int) -> torch.Tensor:
    """SqueezeNet written out with torch.nn.functional in float64, from the decoded arrays."""
    p = [(torch.from_numpy(np.asarray(d["weight"], np.float64)),
          torch.from_numpy(np.asarray(d["bias"], np.float64))) for d in layers]  # fmt: skip
    h = F.relu(F.conv2d(x.double(), *p[0], stride=2))
    h = F.max_pool2d(h, 3, 2, ceil_mode=True)
    for fire in range(8):
        sq, e1, e3 = p[1 + 3 * fire : 4 + 3 * fire]
        s = F.relu(F.conv2d(h, *sq))
        h = torch.cat([F.relu(F.conv2d(s, *e1)), F.relu(F.conv2d(s, *e3, padding=1))], 1)
        if fire + 1 in POOLS[version][1:]:
            h = F.max_pool2d(h, 3, 2, ceil_mode=True)
    h = F.relu(F.conv2d(h, *p[25], padding=conv10_pad))
    return h.mean((2, 3))


def real_batch(shared, model, n: int = 4) -> torch.Tensor:
    files = sorted((shared("data/imagenet-val") / "images").iterdir())[:n]
    from squeezenet.data.transforms import load_image

    return torch.stack([model.weights_info.preprocess(load_image(f)) for f in files])


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    error = (actual.double() - expected.double()).abs().max() / expected.double().abs().max()
    assert error < rel, f"max error {error:.2e} relative to the largest logit"


def test_deep_compression_v1_0_matches_independent_float64_forward(shared):
    path = shared(DC)
    model = squeezenet.load_model(path)
    info = model.weights_info
    assert (info.arch, info.preprocess.name, info.model_kwargs) == (
        "squeezenet1_0", "caffe", {"classifier_padding": 1}
    )  # fmt: skip
    layers = decode_deep_compression(path, conv_shapes(model))
    x = real_batch(shared, model)
    with torch.no_grad():
        logits = model(x)
    reference = functional_forward(layers, x, "1_0", conv10_pad=1)
    assert_rel_close(logits, reference)
    # The Caffe padding matters: without it the logits differ far beyond tolerance.
    without = functional_forward(layers, x, "1_0", conv10_pad=0)
    assert (without - reference).abs().max() > 1e-2 * reference.abs().max()


def test_ncnn_v1_1_matches_independent_float64_forward(shared):
    path = shared(NCNN)
    model = squeezenet.load_model(path)
    assert (model.weights_info.arch, model.weights_info.preprocess.name) == (
        "squeezenet1_1", "torchvision"
    )  # fmt: skip
    x = real_batch(shared, model)
    with torch.no_grad():
        logits = model(x)
    layers = decode_ncnn_bin(path.with_suffix(".bin"), conv_shapes(model))
    assert_rel_close(logits, functional_forward(layers, x, "1_1", conv10_pad=0))


def test_chainer_file_reproduces_chainers_logits(shared):
    model = squeezenet.load_model(shared("weights/chainer-seed-format/weights.npz"))
    assert model.weights_info.arch == "squeezenet1_0_chainer"
    x = torch.from_numpy(np.load(shared("weights/chainer-seed-format/input.npy")))
    expected = torch.from_numpy(np.load(shared("weights/chainer-seed-format/logits.npy")))
    with torch.no_grad():
        # float32: 4.7e-7 of the largest logit measured (5.7e-7 with other conv kernels)
        assert_rel_close(model(x), expected, rel=1e-6)
        # float64: only Chainer's own float32 rounding is left (1.9e-7 measured)
        assert_rel_close(model.double()(x.double()), expected, rel=3e-7)


@pytest.mark.parametrize("weights,top1,top5", [(DC, 0.705, 0.900), (NCNN, 0.731, 0.903)])
def test_accuracy_on_labelled_imagenet_val(shared, weights, top1, top5):
    """650 ILSVRC2012 val images; an independent decoding measured these top-1/top-5."""
    model = squeezenet.load_model(shared(weights))
    result = evaluate(model, shared("data/imagenet-val"), progress=False)
    assert result["n"] == 650 and result["skipped"] == 0
    assert abs(result["top1"] - top1) <= 0.015, result
    assert abs(result["top5"] - top5) <= 0.015, result


def test_known_file_is_recognised_by_hash_whatever_its_name(shared, tmp_path):
    copy = tmp_path / "mystery.bin"
    shutil.copy(shared(DC), copy)
    model = squeezenet.load_model(copy)
    assert model.weights_info.entry == "squeezenet1_0.deep_compression"
    assert model.weights_info.model_kwargs["classifier_padding"] == 1


def test_predictions_on_real_photos_carry_imagenet_labels(shared):
    model = squeezenet.load_model(shared(NCNN))
    results, logits = predict(model, [shared("data/photos/chelsea.png")], progress=False)
    assert logits.shape == (1, 1000)
    assert results[0]["top"][0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert sum(t["prob"] for t in results[0]["top"]) <= 1.0 + 1e-6
