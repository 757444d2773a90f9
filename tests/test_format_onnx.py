"""ONNX graphs: weights by graph position, whatever the initializers are called."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from squeezenet.errors import FormatError
from squeezenet.weights.formats import onnx as onnx_format


def export(model: torch.nn.Module, path, exporter: str, shape=(1, 3, 8, 8)) -> None:
    """``torch.onnx.export``: the torch.export-based exporter, or the TorchScript one (deprecated)
    that wrote most ONNX files found elsewhere (e.g. the ONNX model zoo's)."""
    x = (torch.zeros(shape),)
    if exporter == "dynamo":
        torch.onnx.export(model.eval(), x, path, dynamo=True, external_data=False, verbose=False)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), x, str(path), dynamo=False)


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, 1, bias=False),
        torch.nn.Conv2d(6, 5, 3, padding=1),
        torch.nn.Flatten(),
        torch.nn.Linear(5 * 6 * 6, 7),
    )
    path = tmp_path_factory.mktemp("onnx") / f"small-{request.param}.onnx"
    export(model, path, request.param)
    return path, model


def test_torch_export_round_trip(exported):
    path, model = exported
    layers = onnx_format.read(path)
    if "torchscript" in path.name:
        assert [name for name, _ in layers] == ["/0/Conv", "/2/Conv", "/3/Conv", "/5/Gemm"]
    else:  # named after FX nodes or by the exporter's optimizer: only the order is certain
        assert len(layers) == 4 and all(name.startswith("node_") for name, _ in layers)
    expected = [
        {"weight": m.weight, **({"bias": m.bias} if m.bias is not None else {})}
        for m in model
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    for (_, got), want in zip(layers, expected, strict=True):
        assert got.keys() == want.keys()
        for key, tensor in want.items():
            array = tensor.detach().numpy()
            assert got[key].dtype == array.dtype and got[key].tobytes() == array.tobytes()


def tensor(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def test_mapping_is_by_graph_position(tmp_path):
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((4, 3, 3, 3), np.float32), rng.standard_normal(4, np.float32)
    bn = [rng.standard_normal(4, np.float32) for _ in range(4)]
    w2 = rng.standard_normal((2, 4, 1, 1), np.float32)
    gemm_b, gemm_c = rng.standard_normal((8, 5), np.float32), rng.standard_normal(5, np.float32)
    mm = rng.standard_normal((5, 3), np.float32)
    # Names say the opposite of what the tensors are; the list order is scrambled.
    inits = [
        tensor("conv1_w_0", mm),
        tensor("7", gemm_c),
        tensor("conv1_b_0", gemm_b),
        tensor("fc_w", w2),
        *(tensor(f"bn_{i}", a) for i, a in enumerate(bn)),
        tensor("b", b1),
        tensor("a", w1),
    ]
    w2_const = helper.make_node("Constant", [], ["k"], value=tensor("k", w2))
    nodes = [
        helper.make_node("Conv", ["x", "a", "b"], ["y1"], name="first"),
        helper.make_node("BatchNormalization", ["y1", "bn_3", "bn_0", "bn_2", "bn_1"], ["y2"]),
        helper.make_node("Relu", ["y2"], ["y3"]),
        w2_const,
        helper.make_node("Conv", ["y3", "k"], ["y4"], name="second"),
        helper.make_node("Flatten", ["y4"], ["y5"]),
        helper.make_node("Gemm", ["y5", "conv1_b_0", "7"], ["y6"], name="fc"),
        helper.make_node("MatMul", ["y6", "conv1_w_0"], ["y7"]),
        helper.make_node("MatMul", ["y7", "y7"], ["y8"]),  # no weights: skipped
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y8", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), path)
    layers = onnx_format.read(path)
    assert [n for n, _ in layers] == ["first", "BatchNormalization_1", "second", "fc", "MatMul_7"]
    first, norm, second, fc, matmul = (p for _, p in layers)
    np.testing.assert_array_equal(first["weight"], w1)
    np.testing.assert_array_equal(first["bias"], b1)
    assert [norm[k].tobytes() for k in ("weight", "bias", "running_mean", "running_var")] == [
        bn[i].tobytes() for i in (3, 0, 2, 1)
    ]
    assert second.keys() == {"weight"} and second["weight"].tobytes() == w2.tobytes()
    np.testing.assert_array_equal(fc["weight"], gemm_b.T)  # transB=0: stored (in, out)
    np.testing.assert_array_equal(fc["bias"], gemm_c)
    np.testing.assert_array_equal(matmul["weight"], mm.T)
    assert fc["weight"].flags.c_contiguous and first["weight"].flags.writeable


def small_graph(
    conv_inputs: list[str], inits: list[TensorProto], op: str = "Conv"
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, conv_inputs, ["y"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(graph)


def test_bad_graphs(tmp_path):
    path = tmp_path / "g.onnx"
    cases = [
        (small_graph(["x", "w"], []), "Conv 'Conv_0': weight 'w' is not an initializer"),
        (small_graph(["x"], []), "has no weight"),
        (small_graph(["x", "w"], [tensor("w", np.ones((2, 2), np.float32))], "Relu"), "no Conv"),
    ]
    broken = tensor("w", np.ones((2, 3), np.float32))
    broken.dims[:] = [4, 3]  # more values claimed than stored
    cases.append((small_graph(["x", "w"], [broken]), "'Conv_0'|reshape|size"))
    for model, message in cases:
        onnx.save(model, path)
        with pytest.raises(FormatError, match=f"^{path}: .*({message})"):
            onnx_format.read(path)


def test_bad_files(exported, tmp_path):
    data = exported[0].read_bytes()
    path = tmp_path / "bad.onnx"
    contents = [
        b"",
        b"ir_version: 7\ngraph { name: 'text, not binary' }\n",
        np.random.default_rng(0).bytes(4096),
        data[: len(data) // 2],
        data[:-3],
    ]
    for content in contents:
        path.write_bytes(content)
        with pytest.raises(FormatError, match=f"^{path}: "):
            onnx_format.read(path)
    with pytest.raises(FormatError, match="not a readable ONNX model"):
        onnx_format.read(tmp_path / "missing.onnx")
