"""Static int8 quantization with ONNX Runtime: QDQ graph, per-channel weights, real calibration.

Activations are uint8 and weights int8 (ONNX Runtime's fast U8S8 path on x86, which it fuses
into QLinearConv). Activation ranges are by default the 99.999th percentile of the calibration
images' histograms: on imagenet-val this loses less top-1 than the plain min/max (see
docs/inference.md). The pooled logits stay fp32: uint8 logits would reorder the top classes.

x86 CPUs without VNNI (AVX2, AVX-512 before VNNI) add the u8 x s8 products in pairs into int16,
which saturates with 8-bit weights (v1.1's top class changed on a quarter of the test images);
quantized on such a CPU, the weights get 7 bits. A file made on a VNNI CPU keeps 8-bit weights
and is the one to run on VNNI CPUs (``OnnxModel`` warns when one runs where sums saturate).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime import quantization as ortq
from torch import nn
from tqdm import tqdm

from ..data.datasets import ImageDataset, list_images
from ..data.transforms import Preprocess
from ..errors import SqueezeNetError
from ..io import atomic_write_bytes
from ..weights.formats.onnx import metadata
from .export import check_output
from .export.onnx import INPUT, onnx_model, set_meta

CALIBRATION_BATCH = 10
NUM_IMAGES = 300
METHODS = {"percentile": ortq.CalibrationMethod.Percentile, "minmax": ortq.CalibrationMethod.MinMax}
FP32_OPS = ("GlobalAveragePool", "Flatten", "ReduceMean", "Reshape")  # the pooled logits


def calibration_images(
    folder: str | Path, preprocess: Preprocess, num_images: int = NUM_IMAGES, progress: bool = True
) -> torch.Tensor:
    """Up to ``num_images`` preprocessed images spread evenly over ``folder`` (recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SqueezeNetError(f"{folder}: calibration folder does not exist")
    files = list_images([folder])
    files = files[:: max(1, len(files) // num_images)][:num_images]
    dataset = ImageDataset(files, None, preprocess, draft_size=preprocess.resize)
    samples = [s for s in tqdm(dataset, desc="calibration images", disable=not progress) if s]
    if not samples:
        raise SqueezeNetError(f"{folder}: none of {len(files)} calibration images could be decoded")
    return torch.stack([x for x, _, _ in samples])


class _Batches(ortq.CalibrationDataReader):
    """Calibration batches; ``set_range`` lets ONNX Runtime collect statistics batch by batch."""

    def __init__(self, images: np.ndarray) -> None:
        self.batches = np.array_split(images, max(1, len(images) // CALIBRATION_BATCH))
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict | None:
        batch = next(self.pending, None)
        return None if batch is None else {INPUT: batch}


def int16_saturates(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies u8 x s8 through saturating int16 pairs (x86 without VNNI)."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:  # not Linux: assume a CPU with VNNI or another instruction set
        return False
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def eight_bit_weights(proto: onnx.ModelProto) -> bool:
    """Whether an int8 graph's weights use the 8th bit (7-bit ones lie in [-64, 64])."""
    for tensor in proto.graph.initializer:
        if tensor.data_type == onnx.TensorProto.INT8:
            weights = onnx.numpy_helper.to_array(tensor)
            if weights.size and max(-int(weights.min()), int(weights.max())) > 64:
                return True
    return False


def quantize_onnx(
    proto: onnx.ModelProto, images: np.ndarray, method: str = "percentile"
) -> onnx.ModelProto:
    """The int8 QDQ version of an fp32 graph, calibrated on ``images`` (N, C, H, W) float32."""
    seven_bits = int16_saturates()
    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared, int8 = (Path(tmp) / name for name in ("fp32", "prepared", "int8"))
        onnx.save(proto, fp32)
        ortq.quant_pre_process(fp32, prepared)
        keep = [n.name for n in onnx.load(prepared).graph.node if n.op_type in FP32_OPS]
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
            ortq.quantize_static(
                prepared, int8, _Batches(images.astype(np.float32)),
                quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                reduce_range=seven_bits,
                activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8,
                calibrate_method=METHODS[method], nodes_to_exclude=keep,
                extra_options={"CalibStridedMinMax": 1},  # batch by batch: bounded memory
            )  # fmt: skip
        quantized = onnx.load(int8)
    bits = "7-bit (quantized on a CPU without VNNI)" if seven_bits else "8-bit"
    note = f"int8 QDQ, per-channel {bits} weights, {method} calibration on {len(images)} images"
    set_meta(quantized, {**metadata(proto), "quantization": note})
    return quantized


def quantize(
    model: nn.Module,
    calibration: str | Path,
    output: str | Path,
    *,
    num_images: int = NUM_IMAGES,
    method: str = "percentile",
    progress: bool = True,
) -> int:
    """Write ``model`` as an int8 ONNX file calibrated on ``calibration``; return the count."""
    output = check_output(output)
    images = calibration_images(calibration, model.weights_info.preprocess, num_images, progress)
    quantized = quantize_onnx(onnx_model(model), images.numpy(), method)
    atomic_write_bytes(output, quantized.SerializeToString())
    return len(images)
