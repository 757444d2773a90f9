"""Backends that turn a model into a callable mapping a float32 NCHW batch to logits.

* ``eager``: the module as it is (NCHW).
* ``channels_last``: a copy in NHWC memory order, which takes oneDNN's direct paths.
* ``compile``: ``torch.compile`` (Inductor) with frozen weights; tens of seconds to start.
* ``onnxruntime``: the ONNX export run by ONNX Runtime with all graph optimizations (its
  NCHWc kernels); the fastest fp32 backend here, so ``auto`` picks it.
* ``onnxruntime-int8``: static int8 (QDQ, per-channel weights) calibrated on ``example``.
* ``openvino``, ``openvino-int8``: the same two graphs run by OpenVINO's CPU plugin (the
  optional extra ``pip install 'squeezenet[openvino]'``); in true fp32, not its default bf16.
* ``executorch``, ``executorch-int8``: the model exported to an ExecuTorch program (XNNPACK
  delegate; int8 by PT2E, calibrated on ``example``) run by ``executorch.runtime``; offered
  where ExecuTorch is installed (``executorch_runtime.py``).
* ``ncnn``: the ncnn export (``export/ncnn.py``) run by Tencent's ncnn in fp32, image by image
  (the optional extra ``pip install 'squeezenet[ncnn]'``): what a phone or board would run.
* ``cuda``: a copy on the GPU (NHWC, fp32 without TF32); batches go there and logits come back.
  Offered only where a CUDA GPU is visible.

Every backend runs the eval-mode model with its Fire BatchNorms folded into the convolutions
(``fold.py``). The CPU backends use ``torch.get_num_threads()`` threads. An .onnx file (e.g. one
written by ``squeezenet quantize``) runs as it is through ``OnnxModel``, which reads its
preprocessing from the file; a .pte file likewise through ``ExecuTorchModel``.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import SqueezeNetError
from ..weights.detect import sha256_file
from ..weights.formats.ncnn import INPUT_BLOB, OUTPUT_BLOB
from ..weights.formats.onnx import metadata
from ..weights.info import WeightsInfo
from .executorch_runtime import EXECUTORCH_BACKENDS, ExecuTorchModel, check_kind, open_pte
from .executorch_runtime import available as executorch_available
from .executorch_runtime import build as build_executorch
from .export import input_shape
from .export.onnx import onnx_model, read_onnx
from .fold import fold_batch_norm

Forward = Callable[[torch.Tensor], torch.Tensor]
OPENVINO_BACKENDS = ("openvino", "openvino-int8")
ONNX_BACKENDS = ("onnxruntime", "onnxruntime-int8", *OPENVINO_BACKENDS)  # run an ONNX graph
# calibrate on example=, or run int8 files
INT8_BACKENDS = ("onnxruntime-int8", "openvino-int8", "executorch-int8")
OPTIONAL = {"openvino": "openvino", "openvino-int8": "openvino", "ncnn": "ncnn"}  # the module
BACKENDS = ["auto", "eager", "channels_last", "compile", *ONNX_BACKENDS, "ncnn"]
BACKENDS += list(EXECUTORCH_BACKENDS) if executorch_available() else []
BACKENDS += ["cuda"] if torch.cuda.is_available() else []
MICRO_BATCH = 4
INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}


def check_backend(backend: str) -> None:
    if backend == "cuda" and not torch.cuda.is_available():
        raise SqueezeNetError("backend 'cuda' needs a CUDA GPU; none is visible")
    if backend not in BACKENDS:
        raise SqueezeNetError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend in OPENVINO_BACKENDS:
        import_openvino(backend)
    if backend == "ncnn":
        import_ncnn()


def import_openvino(backend: str = "openvino"):
    """The ``openvino`` module, or a one-line error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise SqueezeNetError(
            f"backend {backend!r} needs OpenVINO: pip install 'squeezenet[openvino]'"
        ) from None
    return openvino


def import_ncnn():
    """The ``ncnn`` module, or a one-line error saying how to install it."""
    try:
        import ncnn
    except ImportError:
        raise SqueezeNetError("backend 'ncnn' needs ncnn: pip install 'squeezenet[ncnn]'") from None
    return ncnn


def installed_backends() -> list[str]:
    """The backends this machine can run (``auto`` left out): what ``bench`` times by default."""
    return [
        b
        for b in BACKENDS[1:]
        if b not in OPTIONAL or importlib.util.find_spec(OPTIONAL[b]) is not None
    ]


def runtime(backend: str) -> str:
    """The library that runs an ONNX graph under ``backend``."""
    return "openvino" if backend in OPENVINO_BACKENDS else "onnxruntime"


def auto_backend() -> str:
    """The fastest exact (fp32) backend installed (measured: benchmarks/RESULTS.md)."""
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") else "channels_last"


def optimize(
    model: nn.Module, backend: str = "auto", example: torch.Tensor | None = None
) -> Forward:
    """A callable mapping a float32 NCHW batch to logits through ``backend``.

    fp32 backends give the module's numbers within 1e-4 relative. ``example`` is a batch of
    the input size (default: the preprocessing's crop); for ``onnxruntime-int8`` it is the
    calibration data, so it must hold real preprocessed images.
    """
    check_backend(backend)
    if isinstance(model, ExecuTorchModel):
        check_kind(model, backend)
        return model
    if isinstance(model, OnnxModel):
        if backend not in ("auto", *ONNX_BACKENDS):
            raise SqueezeNetError(
                f"{model.path}: an ONNX file runs only with the onnxruntime and openvino "
                f"backends, not {backend!r}"
            )
        if backend in INT8_BACKENDS and not model.int8:
            raise SqueezeNetError(f"{model.path}: an fp32 graph; make an int8 one with quantize")
        if backend != "auto" and runtime(backend) != model.runtime:
            return model.run_with(runtime(backend))
        return model
    model = fold_batch_norm(model)  # eval mode; BatchNorm-free copy for the BatchNorm variants
    backend = auto_backend() if backend == "auto" else backend
    shape = input_shape(model, example)
    return checked(BUILDERS[backend](model, example, shape), shape)


def checked(forward: Forward, shape: tuple[int, ...]) -> Forward:
    """``forward``, refusing with a clear error any input that is not a (N, *shape) float32."""
    expected = f"(N, {', '.join(map(str, shape))})"

    def run(x: torch.Tensor) -> torch.Tensor:
        if not (
            isinstance(x, torch.Tensor)
            and x.dtype == torch.float32
            and tuple(x.shape[1:]) == tuple(shape)
            and x.shape[0] > 0
        ):
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise SqueezeNetError(f"expected a float32 batch of shape {expected}, got {got}")
        return forward(x)

    return run


def _eager(model: nn.Module, example: torch.Tensor | None, shape: tuple) -> Forward:
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return forward


def _channels_last(model: nn.Module, example: torch.Tensor | None, shape: tuple) -> Forward:
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return nhwc(x.contiguous(memory_format=torch.channels_last))

    return forward


def _compile(model: nn.Module, example: torch.Tensor | None, shape: tuple) -> Forward:
    compiled = torch.compile(copy.deepcopy(model), options={"freezing": True})

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # freezing needs no_grad; inference tensors would not do
            return compiled(x)

    forward(torch.zeros(1, *shape) if example is None else example)  # compile now, not later
    return forward


def _cuda(model: nn.Module, example: torch.Tensor | None, shape: tuple) -> Forward:
    """The module on the GPU in NHWC and true fp32; logits come back to the CPU.

    The cuDNN settings hold for the whole process (cuDNN has no per-model switch): TF32 off
    (it rounds convolution inputs to 10 mantissa bits), kernels chosen once per batch size.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    gpu = copy.deepcopy(model).to("cuda", memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = x.to("cuda").contiguous(memory_format=torch.channels_last)
            return gpu(x).cpu()  # waits for the GPU

    return forward


def session(model: bytes | str, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimizations on ``threads`` threads.

    Idle threads sleep instead of spinning: spinning took CPU from the image decoders (and
    from other programs) and measured no faster even for the network alone.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise SqueezeNetError(f"ONNX Runtime cannot run the model ({e})") from None


def _run_session(model: bytes, micro_batch: int | None = None) -> Forward:
    """Run a batch through ONNX Runtime ``micro_batch`` (default ``MICRO_BATCH``) images at a time.

    Small slices keep the activations in cache: at batch 20 on one thread this measured 6-13%
    faster than one call (the cache effect of docs/inference.md), and never slower.
    """
    micro_batch = micro_batch or MICRO_BATCH
    runner = session(model)
    feed, fetch = runner.get_inputs()[0].name, runner.get_outputs()[0].name

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().contiguous().numpy()
        out = [
            runner.run([fetch], {feed: x[i : i + micro_batch]})[0]
            for i in range(0, len(x), micro_batch)
        ]
        return torch.from_numpy(np.concatenate(out))

    return forward


def _run_openvino(model: bytes, micro_batch: int | None = None) -> Forward:
    """Run a batch through OpenVINO's CPU plugin, ``micro_batch`` (default: all) at a time.

    ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AVX512-BF16 the plugin otherwise computes in
    bfloat16 (1e-2 relative instead of 1e-6). Threads are not pinned to cores, which the image
    decoding processes share. An infer request serves one call at a time: one per thread.
    """
    ov = import_openvino()
    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False,
    }
    try:
        graph = core.read_model(model, ov.Tensor(np.empty(0, np.uint8)))  # weights are inside
        compiled = core.compile_model(graph, "CPU", config)
    except Exception as e:  # OpenVINO raises RuntimeError with its own message
        raise SqueezeNetError(f"OpenVINO cannot run the model ({e})") from None
    local = threading.local()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not hasattr(local, "request"):
            local.request = compiled.create_infer_request()
        x = x.detach().contiguous().numpy()
        step = micro_batch or len(x)
        # infer() returns views of the request's output buffer: copy before the next call
        out = [local.request.infer([x[i : i + step]])[0].copy() for i in range(0, len(x), step)]
        return torch.from_numpy(np.concatenate(out))

    return forward


RUNTIMES = {"onnxruntime": _run_session, "openvino": _run_openvino}


def _int8_graph(model: nn.Module, example: torch.Tensor | None, backend: str) -> bytes:
    """The QDQ int8 graph calibrated on ``example``, as ``squeezenet quantize`` writes it."""
    from .quantize import quantize_onnx

    if example is None:
        raise SqueezeNetError(
            f"{backend} calibrates on real images: pass example= a batch of preprocessed "
            "images (CLI: --calibration DIR), or run an int8 file made by 'squeezenet quantize'"
        )
    return quantize_onnx(onnx_model(model, example), example.numpy()).SerializeToString()


def _onnx_builder(backend: str) -> Callable[[nn.Module, torch.Tensor | None, tuple], Forward]:
    """Export (and for int8, quantize) the model, then run the graph with the backend's runtime."""

    def build(model: nn.Module, example: torch.Tensor | None, shape: tuple) -> Forward:
        if backend in INT8_BACKENDS:
            graph = _int8_graph(model, example, backend)
        else:
            graph = onnx_model(model, example).SerializeToString()
        return RUNTIMES[runtime(backend)](graph)

    return build


def _ncnn(model: nn.Module, example: torch.Tensor | None, shape: tuple) -> Forward:
    """The ncnn export run by ncnn in true fp32, one image per extractor.

    fp16 and bf16 storage and arithmetic are off (ncnn turns them on where the CPU has them);
    packed layouts, Winograd and GEMM convolutions stay on (fp32: 2e-6 of the largest logit).
    ncnn reads the graph and the weights from files, so they go through a temporary folder.
    """
    ncnn = import_ncnn()
    from .export.ncnn import files

    param, weights, _ = files(model, shape=shape)
    net = ncnn.Net()
    for option in ("fp16_storage", "fp16_arithmetic", "fp16_packed", "bf16_storage"):
        if hasattr(net.opt, f"use_{option}"):
            setattr(net.opt, f"use_{option}", False)
    net.opt.num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="squeezenet-ncnn-") as folder:
        (Path(folder) / "model.param").write_text(param)
        (Path(folder) / "model.bin").write_bytes(weights)
        if net.load_param(f"{folder}/model.param") or net.load_model(f"{folder}/model.bin"):
            raise SqueezeNetError("ncnn cannot load the exported model")
    channels, height, width = shape

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = []
        for image in x.detach().numpy():
            # a Mat of ncnn's own (channels padded to 16 bytes), filled through its strided
            # view: ncnn.Mat(array) would point into the array without owning it
            mat = ncnn.Mat(width, height, channels)
            np.array(mat, copy=False)[...] = image
            extractor = net.create_extractor()
            extractor.input(INPUT_BLOB, mat)
            status, logits = extractor.extract(OUTPUT_BLOB)
            if status != 0:
                raise SqueezeNetError(f"ncnn failed to run the model (status {status})")
            out.append(np.array(logits).reshape(-1))
        return torch.from_numpy(np.stack(out))

    return forward


BUILDERS = {
    "eager": _eager,
    "channels_last": _channels_last,
    "compile": _compile,
    **{backend: _onnx_builder(backend) for backend in ONNX_BACKENDS},
    "ncnn": _ncnn,
    "cuda": _cuda,
    **{
        backend: lambda model, example, shape, b=backend: build_executorch(b, model, example)
        for backend in EXECUTORCH_BACKENDS
    },
}


def is_int8(proto: onnx.ModelProto) -> bool:
    return any(node.op_type in INT8_OPS for node in proto.graph.node)


class OnnxModel(nn.Module):
    """An .onnx file run as it is by ONNX Runtime (or ``runtime="openvino"``).

    ``weights_info`` comes from its metadata: files written by ``squeezenet export`` or
    ``squeezenet quantize`` carry their preprocessing and labels; other files get
    ``preprocess`` (default ``torchvision``) and ImageNet labels when they have 1,000 outputs.
    A graph with a fixed batch of 1 is run image by image.
    """

    def __init__(
        self,
        path: str | Path,
        proto: onnx.ModelProto | None = None,
        preprocess: str | None = None,
        runtime: str = "onnxruntime",
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.runtime = runtime
        self._proto, self._preprocess = proto or read_onnx(self.path), preprocess
        proto = self._proto
        self.int8 = is_int8(proto)
        if self.int8:
            _warn_if_saturating(self.path, proto)
        dims = [d.dim_value or None for d in proto.graph.input[0].type.tensor_type.shape.dim]
        outputs = proto.graph.output[0].type.tensor_type.shape.dim
        if len(dims) != 4 or None in dims[1:] or dims[0] not in (None, 1):
            raise SqueezeNetError(f"{self.path}: input shape {dims} is not (N or 1, C, H, W)")
        self.weights_info = _info(metadata(proto), self.path, outputs[-1].dim_value, preprocess)
        runner = RUNTIMES[runtime](proto.SerializeToString(), dims[0])
        self._forward = checked(runner, tuple(dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def run_with(self, runtime: str) -> OnnxModel:
        """The same file and preprocessing run by another runtime."""
        return OnnxModel(self.path, self._proto, self._preprocess, runtime)


_WARNED_SATURATING: set[Path] = set()  # once per file: run_with() opens it again


def _warn_if_saturating(path: Path, proto: onnx.ModelProto) -> None:
    from .quantize import eight_bit_weights, int16_saturates  # onnxruntime.quantization: slow

    if path not in _WARNED_SATURATING and int16_saturates() and eight_bit_weights(proto):
        _WARNED_SATURATING.add(path)
        print(
            f"warning: {path}: 8-bit int8 weights on a CPU without VNNI, whose int16 sums "
            "saturate (top-1 drops); 'squeezenet quantize' here writes 7-bit ones",
            file=sys.stderr,
        )


def _info(meta: dict, path: Path, outputs: int, preprocess: str | None) -> WeightsInfo:
    """WeightsInfo from an ONNX file's metadata, with defaults for files from elsewhere."""
    meta = {"arch": "onnx", **meta, "num_classes": meta.get("num_classes") or outputs}
    overrides = {"preprocess": preprocess} if preprocess else {}
    origin = {"source": str(path), "sha256": sha256_file(path), "file_format": "onnx"}
    return WeightsInfo.from_meta(meta, **origin, **overrides)


def open_onnx(spec: str | Path, backend: str, preprocess: str | None = None) -> OnnxModel | None:
    """The weights as an ``OnnxModel`` when they are an .onnx file to run as it is, else None.

    Under ``auto``, ``onnxruntime`` and ``openvino`` every .onnx file runs as it is; an int8
    file runs only so (by OpenVINO under the openvino backends). An fp32 file under another
    backend is for ``load_model`` (rebuilt as a module).
    """
    path = Path(spec)
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return None
    check_backend(backend)
    proto = read_onnx(path)
    int8 = is_int8(proto)
    if int8 and backend not in ("auto", *ONNX_BACKENDS):
        raise SqueezeNetError(
            f"{path}: an int8 ONNX graph runs only with the backends {', '.join(ONNX_BACKENDS)} "
            "(or auto)"
        )
    if int8 or backend in ("auto", "onnxruntime", "openvino"):
        return OnnxModel(path, proto, preprocess, runtime(backend))
    return None


def open_file(spec: str | Path, backend: str, preprocess: str | None = None) -> nn.Module | None:
    """The weights as a module running the file as it is (.onnx, .pte), else None."""
    if Path(spec).suffix.lower() == ".pte":
        check_backend(backend)
        return open_pte(spec, backend, preprocess)
    return open_onnx(spec, backend, preprocess)
