"""ExecuTorch programs (.pte) run by ``executorch.runtime``: files as they are, or the backends.

* ``ExecuTorchModel``: a .pte file as a module carrying ``weights_info``, read from the
  program's ``weights_info`` constant method (``export/executorch.py`` writes it).
* ``executorch``, ``executorch-int8`` backends: the module exported to a temporary program
  (int8: calibrated on ``example``) and run the same way.

The runtime's C++ code logs to file descriptor 2 (CPU probing on the first XNNPACK program,
and why a program does not load), and importing it prints torchao's messages there too; those
lines are kept off the terminal, and the last one goes into the error of a file that fails.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import FormatError, SqueezeNetError
from ..weights.detect import sha256_file
from ..weights.info import WeightsInfo
from .export.executorch import BATCH_METHOD, META_METHOD, pte_program, quiet_stderr

Forward = Callable[[torch.Tensor], torch.Tensor]
EXECUTORCH_BACKENDS = ("executorch", "executorch-int8")


def available() -> bool:
    return importlib.util.find_spec("executorch") is not None


def _runtime():
    """The ExecuTorch runtime singleton, with its threads set to torch's thread count."""
    with quiet_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its ExperimentalWarning, on every import
        try:
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime
        except ImportError:
            raise SqueezeNetError(
                "the executorch backends and .pte files need ExecuTorch: "
                "pip install 'squeezenet[executorch]'"
            ) from None
        if portable_lib._threadpool_get_thread_count() != torch.get_num_threads():
            portable_lib._unsafe_reset_threadpool(torch.get_num_threads())
        return Runtime.get()


def _reason(lines: list[str], error: Exception) -> str:
    """The runtime's last log line (without its ``[file.cpp:N]`` prefix), else the error."""
    logged = [line.split("] ", 1)[-1] for line in lines if line.startswith("[")]
    return " ".join((logged[-1] if logged else str(error)).split())


class ExecuTorchModel(nn.Module):
    """A .pte program run by ``executorch.runtime`` (file ``path``, or ``program`` bytes).

    Batches larger than the program's bound are run in slices; outputs are copied out of the
    runtime's planned memory, which the next call reuses. One call runs at a time.
    """

    def __init__(
        self, path: str | Path, program: bytes | None = None, preprocess: str | None = None
    ) -> None:
        super().__init__()
        self.path = Path(path)
        if program is None and not self.path.is_file():
            raise SqueezeNetError(f"{self.path}: no such file")
        _check_identifier(self.path, program)
        runtime = _runtime()
        with quiet_stderr() as lines:
            try:
                # the program is kept: its methods read their data from it
                self._program = runtime.load_program(program if program is not None else self.path)
                self._method = self._program.load_method("forward")
                meta = self._program.load_method(META_METHOD).execute([])[0]
                self.max_batch = int(self._program.load_method(BATCH_METHOD).execute([])[0])
            except Exception as e:  # the runtime raises RuntimeError, or worse on odd bytes
                raise FormatError(
                    f"{self.path}: not a runnable ExecuTorch program ({_reason(lines, e)})"
                ) from None
        if self.max_batch < 1:
            raise FormatError(f"{self.path}: the program's max_batch is {self.max_batch}")
        self.weights_info = _info(meta, self.path, program, preprocess)
        self.int8 = "quantization" in self.weights_info.extra
        crop = self.weights_info.preprocess.crop
        self.input_shape = (3, crop, crop)
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            isinstance(x, torch.Tensor)
            and x.dtype == torch.float32
            and tuple(x.shape[1:]) == self.input_shape
            and len(x)
        ):
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            expected = f"(N, {', '.join(map(str, self.input_shape))})"
            raise SqueezeNetError(f"{self.path}: expected a float32 {expected} batch, got {got}")
        x = x.detach().contiguous()
        with self._lock:
            return torch.cat([
                self._method.execute([x[i : i + self.max_batch]])[0].clone()
                for i in range(0, len(x), self.max_batch)
            ])  # fmt: skip


def _check_identifier(path: Path, program: bytes | None) -> None:
    """Refuse a file whose 4-byte program identifier (bytes 4-7) is not ``ET`` and 2 digits.

    The runtime logs a wrong identifier as text, and its pybind11 logging aborts the whole
    process on bytes that are not UTF-8; the check keeps such files away from it.
    """
    if program is None:
        with open(path, "rb") as f:
            program = f.read(8)
    if not re.fullmatch(rb"ET\d\d", program[4:8]):
        raise FormatError(f"{path}: not an ExecuTorch program (no ETnn identifier at byte 4)")


def _info(meta: str, path: Path, program: bytes | None, preprocess: str | None) -> WeightsInfo:
    """WeightsInfo from the program's JSON metadata (``quantization`` kept in ``extra``)."""
    try:
        meta = json.loads(meta)
        quantization = meta.pop("quantization", None)
        overrides = {"preprocess": preprocess} if preprocess else {}
        digest = sha256_file(path) if program is None else hashlib.sha256(program).hexdigest()
        info = WeightsInfo.from_meta(
            meta, source=str(path), sha256=digest, file_format="executorch", **overrides
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FormatError(f"{path}: unreadable weights_info in the program ({e})") from None
    if quantization:
        info.extra["quantization"] = quantization
    return info


def open_pte(spec: str | Path, backend: str, preprocess: str | None = None):
    """The weights as an ``ExecuTorchModel`` when they are a .pte file, else None.

    A .pte file runs only as it is: under ``auto`` or the executorch backend of its kind.
    """
    path = Path(spec)
    if path.suffix.lower() != ".pte":
        return None
    if backend not in ("auto", *EXECUTORCH_BACKENDS):
        raise SqueezeNetError(
            f"{path}: a .pte file runs only with the executorch backends, not {backend!r}"
        )
    model = ExecuTorchModel(path, preprocess=preprocess)
    check_kind(model, backend)
    return model


def check_kind(model: ExecuTorchModel, backend: str) -> None:
    """Refuse an fp32 program under ``executorch-int8`` and an int8 one under ``executorch``."""
    kind = "executorch-int8" if model.int8 else "executorch"
    if backend not in ("auto", kind):
        precision = "int8" if model.int8 else "fp32"
        raise SqueezeNetError(f"{model.path}: an {precision} program; run it with --backend {kind}")


def build(backend: str, model: nn.Module, example: torch.Tensor | None) -> Forward:
    """The eval-mode ``model`` exported to a program (int8: calibrated on ``example``)."""
    int8 = backend == "executorch-int8"
    if int8 and example is None:
        raise SqueezeNetError(
            "executorch-int8 calibrates on real images: pass example= a batch of preprocessed "
            "images (CLI: --calibration DIR), or run an int8 file made by "
            "'squeezenet export --format executorch --int8'"
        )
    program = pte_program(model, example, int8=int8)
    return ExecuTorchModel(f"<{backend} program>", program)
