"""Every backend side by side, against the arithmetic floor measured in the same run.

Each backend runs in a process of its own, so its peak resident memory is its own (the peak is
reset once the backend is built, so it counts running, not building) and no backend inherits
another's threads or allocator state. The processes take turns: one timed call each, round
after round, so that load from other programs falls on every backend alike. The floor is the
best rate of a large fp32 and int8 matrix product (PyTorch and ONNX Runtime kernels), taken
in the same rounds at the same thread count; a network at the floor would do nothing but
multiply-accumulate at that rate.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..data.transforms import Preprocess
from ..errors import SqueezeNetError
from ..models.registry import build_model
from ..models.stats import count_macs
from ..weights.load import create_model, load_model
from .backends import INT8_BACKENDS, check_backend, installed_backends, open_file, optimize
from .executorch_runtime import ExecuTorchModel

FLOOR_SIZE = 2048  # side of the square matrices of the floor's products
FLOOR = "floor"


def load(arch: str | None, weights: str | None) -> torch.nn.Module:
    """The model to time: named weights or a file (checked against ``arch``), or random.

    A .pte file is run as it is (``ExecuTorchModel``).
    """
    if weights and Path(weights).suffix.lower() == ".pte":
        return open_file(weights, "auto")
    if weights:
        return create_model(arch, weights=weights) if arch else load_model(weights)
    if not arch:
        raise SqueezeNetError("pass --arch, --weights or both")
    return create_model(arch)


def random_images(preprocess: Preprocess, count: int, seed: int = 0) -> torch.Tensor:
    """Random-pixel images through the real preprocessing: inputs with realistic ranges."""
    rng = np.random.default_rng(seed)
    side = preprocess.resize
    pixels = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    return torch.stack([preprocess(Image.fromarray(p)) for p in pixels])


def _floor_step(threads: int) -> Callable[[int], dict[str, float]]:
    """A step that times one fp32 and one int8 matrix product per kernel library."""
    from onnx import TensorProto, helper

    from .backends import session

    n = FLOOR_SIZE
    rng = np.random.default_rng(0)
    a, b = (torch.from_numpy(rng.standard_normal((n, n), np.float32)) for _ in range(2))
    s8 = torch.from_numpy(rng.integers(-128, 128, (n, n), np.int8))
    u8 = rng.integers(0, 256, (n, n), np.uint8)
    runs = {"torch fp32": lambda: a @ b, "torch int8": lambda: torch._int_mm(s8, s8)}
    for op, kind, feeds, out in [
        ("MatMul", "onnxruntime fp32", {"A": a.numpy(), "B": b.numpy()}, TensorProto.FLOAT),
        ("MatMulInteger", "onnxruntime int8", {"A": u8, "B": s8.numpy()}, TensorProto.INT32),
    ]:
        inputs = [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), [n, n])
            for k, v in feeds.items()
        ]
        output = helper.make_tensor_value_info("Y", out, [n, n])
        graph = helper.make_graph([helper.make_node(op, ["A", "B"], ["Y"])], op, inputs, [output])
        runner = session(helper.make_model(graph).SerializeToString(), threads)
        runs[kind] = lambda r=runner, f=feeds: r.run(None, f)

    def step(batch: int) -> dict[str, float]:
        rates = {}
        for kind, run in runs.items():
            start = time.perf_counter()
            run()
            rates[kind] = 2 * n**3 / (time.perf_counter() - start)
        return rates

    return step


def _backend_step(backend: str, arch, weights, calibration, batches) -> Callable[[int], float]:
    """A step that times one call of ``backend`` on a batch of the given size."""
    model = load(arch, weights)
    preprocess = model.weights_info.preprocess
    inputs = {b: random_images(preprocess, b, seed=b) for b in batches}
    example = inputs[max(batches)]
    if backend in INT8_BACKENDS and calibration:
        from .quantize import calibration_images

        example = calibration_images(calibration, preprocess, progress=False)
    forward = optimize(model, backend, example)

    def step(batch: int) -> float:
        start = time.perf_counter()
        forward(inputs[batch])
        return time.perf_counter() - start

    return step


def _peak_rss_mb() -> float:
    """Peak resident memory since ``_reset_peak_rss`` (Linux) or since the start; NaN where
    the platform does not say (Windows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return float("nan")
    kib = 1 / 1024 if sys.platform == "darwin" else 1  # macOS gives bytes, others KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 1024


def _load_average() -> list[float]:
    """The 1-minute load average, or nothing where the platform has none (Windows)."""
    return [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: restart VmHWM from the current RSS
    except OSError:
        pass


def _worker(conn, backend: str, threads: int, *args) -> None:
    """Build a step for ``backend``, then answer (batch, calls) with each call's result."""
    try:
        torch.set_num_threads(threads)
        step = _floor_step(threads) if backend == FLOOR else _backend_step(backend, *args)
        _reset_peak_rss()
        conn.send(("ready", None))
        while (message := conn.recv()) is not None:
            batch, calls = message
            conn.send([step(batch) for _ in range(calls)])
        conn.send(_peak_rss_mb())
    except Exception as e:  # reported by the parent as this backend's failure
        conn.send(("error", f"{type(e).__name__}: {e}"))


class _Process:
    """A backend in its own spawned process, driven over a pipe."""

    def __init__(self, backend: str, threads: int, *args) -> None:
        self.backend = backend
        spawn = mp.get_context("spawn")
        self.conn, child = spawn.Pipe()
        self.process = spawn.Process(target=_worker, args=(child, backend, threads, *args))
        self.process.start()

    def answer(self):
        while not self.conn.poll(1.0):
            if not self.process.is_alive():
                code = self.process.exitcode
                raise SqueezeNetError(f"backend {self.backend}: process died (exit code {code})")
        answer = self.conn.recv()
        if isinstance(answer, tuple) and answer[0] == "error":
            self.process.join()
            raise SqueezeNetError(f"backend {self.backend}: {answer[1]}")
        return answer

    def run(self, batch: int, calls: int) -> list:
        self.conn.send((batch, calls))
        return self.answer()

    def close(self) -> float:
        """Stop the process; return its peak resident memory in MB."""
        self.conn.send(None)
        peak = self.answer()
        self.process.join()
        return peak

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _rounds(procs: list[_Process], threads: int, batches, repeats: int, warmup: int, bar):
    """Seconds per (backend, batch) and the floor's rates, the processes taking turns."""
    times: dict[tuple[str, int], list[float]] = {}
    rates: list[dict] = []
    for batch in batches:
        bar.set_description(f"{threads} thread(s), batch {batch}")
        for p in procs:
            p.run(batch, warmup)
        bar.update()
        for _ in range(repeats):
            for p in procs:
                answer = p.run(batch, 1)
                if p.backend == FLOOR:
                    rates += answer
                else:
                    times.setdefault((p.backend, batch), []).extend(answer)
            bar.update()
    return times, rates


def bench(
    arch: str | None = None,
    weights: str | None = None,
    *,
    batches: Sequence[int] = (1, 20),
    threads: Sequence[int] | None = None,
    backends: Sequence[str] | None = None,
    repeats: int = 10,
    warmup: int = 2,
    calibration: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Median seconds per batch of each backend, with the floor and peak memory; see module."""
    model = load(arch, weights)
    info = model.weights_info
    if isinstance(model, ExecuTorchModel):  # the file runs as it is; its arch is counted
        backends = backends or ["executorch-int8" if model.int8 else "executorch"]
        model = build_model(info.arch, num_classes=info.num_classes, **info.model_kwargs)
    backends = backends or installed_backends()
    threads = threads or [torch.get_num_threads()]
    for b in backends:
        check_backend(b)
    size = info.preprocess.crop
    macs = count_macs(model, size)
    del model
    rows, floors, loads = [], {}, _load_average()
    bar = tqdm(total=len(threads) * len(batches) * (repeats + 1), disable=not progress)
    for t in threads:
        bar.set_description(f"{t} thread(s): starting backends")
        procs: list[_Process] = []
        try:
            for b in [FLOOR, *backends]:  # one at a time: building one must not slow another
                procs.append(_Process(b, t, arch, weights, calibration, list(batches)))
                procs[-1].answer()
            times, rates = _rounds(procs, t, batches, repeats, warmup, bar)
            peaks = {p.backend: p.close() for p in procs}
        finally:
            for p in procs:
                p.kill()
        floor = {k: statistics.median(r[k] for r in rates) for k in rates[0]}
        floors[t] = floor
        best32 = max(v for k, v in floor.items() if "fp32" in k)
        best8 = max(v for k, v in floor.items() if "int8" in k)
        for batch in batches:
            eager = statistics.median(times[("eager", batch)]) if "eager" in backends else None
            for b in backends:
                seconds = statistics.median(times[(b, batch)])
                rate = best8 if b.endswith("int8") else best32
                floor_seconds = 2 * macs * batch / rate
                rows.append({
                    "backend": b, "threads": t, "batch": batch, "seconds": seconds,
                    "images_per_s": batch / seconds,
                    "vs_eager": eager / seconds if eager else None,
                    "floor_seconds": floor_seconds, "of_floor": floor_seconds / seconds,
                    "peak_rss_mb": peaks[b],
                })  # fmt: skip
    bar.close()
    loads += _load_average()
    return {
        "arch": info.arch, "weights": weights, "image_size": size, "macs": macs,
        "floor_ops_per_s": floors, "repeats": repeats, "load_average": loads, "rows": rows,
    }  # fmt: skip


def format_table(result: dict) -> str:
    """The result of ``bench`` as a Markdown table, one row per backend, thread count, batch."""
    loads = " -> ".join(f"{v:.1f}" for v in result["load_average"])
    lines = [
        f"{result['arch']} ({result['weights'] or 'random weights'}) at {result['image_size']}px,"
        f" {result['macs'] / 1e9:.3f} GMAC per image; median of {result['repeats']} runs;"
        f" load average {loads or 'n/a'} on {os.cpu_count()} cores",
    ]
    for t, floor in result["floor_ops_per_s"].items():
        rates = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in floor.items())
        lines.append(f"floor at {t} thread(s), G(FL)OP/s: {rates}")
    lines += [
        "",
        "| backend | threads | batch | ms/batch | images/s | vs eager | floor/time | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        vs = f"{r['vs_eager']:.2f}x" if r["vs_eager"] else "-"
        lines.append(
            f"| {r['backend']} | {r['threads']} | {r['batch']} | {r['seconds'] * 1e3:.1f} | "
            f"{r['images_per_s']:.0f} | {vs} | {r['of_floor']:.0%} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)
