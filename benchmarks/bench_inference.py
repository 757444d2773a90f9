"""Every inference backend on both real weights, with the headline ratios at batch 20.

Runs ``squeezenet.inference.bench`` (the code behind ``squeezenet bench``) for v1.0 and v1.1 at
batch 1 and 20 on 1 and 2 threads, prints its tables, then the ratios at batch 20 measured in
that same run: ``auto`` (= onnxruntime) against eager NCHW and against the fp32 floor, int8
against eager. Other programs on the machine slow every backend alike (they take turns), but
the load is printed so that a busy run can be told apart:

    .venv/bin/python benchmarks/bench_inference.py [--repeats 10] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import os

from squeezenet.data.datasets import shared_dir
from squeezenet.inference.backends import BACKENDS, auto_backend
from squeezenet.inference.bench import bench, format_table

WEIGHTS = [
    "weights/deep-compression/compressed_SqueezeNet.net",
    "weights/ncnn/squeezenet_v1.1.ncnn.param",
]


def acceptance(result: dict) -> list[str]:
    """auto vs eager and vs the fp32 floor, int8 vs eager, at the largest batch."""
    batch = max(r["batch"] for r in result["rows"])
    rows = {(r["backend"], r["threads"]): r for r in result["rows"] if r["batch"] == batch}
    lines = []
    for t in sorted({r["threads"] for r in result["rows"]}):
        auto, int8 = rows[(auto_backend(), t)], rows[("onnxruntime-int8", t)]
        lines.append(
            f"{result['arch']} batch {batch}, {t} thread(s): auto ({auto_backend()}) "
            f"{auto['vs_eager']:.2f}x eager, {auto['seconds'] / auto['floor_seconds']:.2f}x "
            f"the fp32 floor; int8 {int8['vs_eager']:.2f}x eager, "
            f"{int8['seconds'] / int8['floor_seconds']:.2f}x the int8 floor"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", default="1,20")
    args = parser.parse_args()
    calibration = shared_dir() / "data/imagenette/train"
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    summary = []
    for weights in WEIGHTS:
        result = bench(
            weights=str(shared_dir() / weights),
            batches=[int(b) for b in args.batch.split(",")],
            threads=[int(t) for t in args.threads.split(",")],
            backends=[b for b in BACKENDS if b != "auto"],
            repeats=args.repeats,
            calibration=calibration if calibration.is_dir() else None,
        )
        print(format_table(result), "\n", flush=True)
        summary += acceptance(result)
    print("\n".join(summary))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
