"""Latency of the deploy files against eager PyTorch: eager vs .pt2 vs .onnx, batch 1 and 20.

Each file is run by its own runtime as a user elsewhere would run it: the .pt2 by
``torch.export.load(path).module()``, the .onnx by an ``onnxruntime.InferenceSession`` with
default options but PyTorch's thread count and sleeping idle threads.
The runtimes take turns ``--rounds`` times per batch size (after a warm-up), on random input of
the model's size; the medians are printed in milliseconds, with the file sizes.

    PYTHONPATH=. .venv/bin/python benchmarks/deploy_latency.py [--rounds 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch
from eager_batch_cost import rounds  # the same turn-taking medians

import squeezenet
from squeezenet.data.datasets import shared_dir
from squeezenet.inference.export import export

WEIGHTS = {
    "v1.0": "weights/deep-compression/compressed_SqueezeNet.net",
    "v1.1": "weights/ncnn/squeezenet_v1.1.ncnn.param",
}


def runners(model: torch.nn.Module, folder: Path) -> tuple[dict, dict[str, int]]:
    """The three callables on a float32 batch, and the two files' sizes in bytes."""
    export(model, folder / "m.pt2", "pt2")
    export(model, folder / "m.onnx", "onnx", dynamic_batch=True)
    program = torch.export.load(folder / "m.pt2").module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # idle threads sleep: spinning ones would take the CPU from the runtime whose turn is next
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(folder / "m.onnx"), options, providers=["CPUExecutionProvider"]
    )

    def eager(x: torch.Tensor) -> None:
        with torch.inference_mode():
            model(x)

    def pt2(x: torch.Tensor) -> None:
        with torch.inference_mode():
            program(x)

    def onnx(x: torch.Tensor) -> None:
        session.run(None, {"input": x.numpy()})

    sizes = {s: (folder / f"m.{s}").stat().st_size for s in ("pt2", "onnx")}
    return {"eager": eager, "pt2": pt2, "onnxruntime": onnx}, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="for PyTorch and ONNX Runtime")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # one: two OpenMP threads stall on a busy shared machine
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {threads} torch threads")
    print("| model | batch | eager ms | pt2 ms | onnxruntime ms |")
    print("|---|---|---|---|---|")
    for name, relative in WEIGHTS.items():
        model = squeezenet.load_model(shared_dir() / relative)
        crop = model.weights_info.preprocess.crop
        with tempfile.TemporaryDirectory() as tmp:
            cases, sizes = runners(model, Path(tmp))
            for batch in (1, 20):
                x = torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(0))
                ms = rounds({k: (lambda f=f, x=x: f(x)) for k, f in cases.items()}, args.rounds)
                cells = " | ".join(f"{1000 * ms[k]:.1f}" for k in cases)
                print(f"| {name} | {batch} | {cells} |")
        print(f"  {name} file sizes: " + ", ".join(f"{k} {v:,} bytes" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
