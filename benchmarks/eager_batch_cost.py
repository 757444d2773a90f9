"""Why eager NCHW SqueezeNet v1.0 costs more per image at batch 20 than at batch 1.

Prints, on one thread, measured side by side in rounds:

1. milliseconds per image of eager NCHW, channels_last and onnxruntime at batch 1 to 20;
2. the suspects one by one, 20 calls at batch 1 against one call at batch 20: conv1 (oneDNN
   computes it in a blocked layout and reorders the 20 x 96 x 111 x 111 result back to NCHW),
   its in-place ReLU, the ceil-mode max pool in NCHW and in NHWC, a Fire module's concat, and
   conv1 with oneDNN off (ATen's im2col path).

    .venv/bin/python benchmarks/eager_batch_cost.py [--rounds 5]

See docs/inference.md for the reading of these numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

import squeezenet
from squeezenet.data.datasets import shared_dir
from squeezenet.inference.backends import optimize

BATCHES = (1, 2, 4, 8, 16, 20)


def rounds(cases: dict, n: int) -> dict[str, float]:
    """Median seconds of each case, the cases taking turns ``n`` times after a warm-up."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(n + 1):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            if i:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = squeezenet.load_model(
        shared_dir() / "weights/deep-compression/compressed_SqueezeNet.net"
    )
    x = torch.randn(20, 3, 227, 227) * 50
    print(f"load average {os.getloadavg()[0]:.2f}; 1 thread\n")

    forwards = {
        "eager NCHW": optimize(model, "eager"),
        "channels_last": optimize(model, "channels_last"),
        "onnxruntime": optimize(model, "onnxruntime"),
    }
    cases = {(k, b): (lambda f=f, b=b: f(x[:b])) for k, f in forwards.items() for b in BATCHES}
    seconds = rounds(cases, args.rounds)
    print("| ms per image | " + " | ".join(f"batch {b}" for b in BATCHES) + " |")
    print("| --- |" + " ---: |" * len(BATCHES))
    for k in forwards:
        cells = " | ".join(f"{seconds[(k, b)] / b * 1e3:.1f}" for b in BATCHES)
        print(f"| {k} | {cells} |")

    conv1 = model.features[0]
    fire = model.features[3]
    with torch.inference_mode():
        relu1 = torch.relu(conv1(x))
        nhwc = relu1.contiguous(memory_format=torch.channels_last)
        squeezed = fire.squeeze_activation(fire.squeeze(model.features[2](relu1)))
        left, right = fire.expand1x1(squeezed), fire.expand3x3(squeezed)

    def no_mkldnn(t: torch.Tensor) -> torch.Tensor:
        with torch.backends.mkldnn.flags(enabled=False):
            return conv1(t)

    suspects = {  # each runs on a slice of the batch
        "conv1 (oneDNN, NCHW out)": lambda s: conv1(x[s]),
        "conv1 with oneDNN off": lambda s: no_mkldnn(x[s]),
        "ReLU in place on conv1's output": lambda s: relu1[s].relu_(),
        "max pool 3/2 ceil, NCHW": lambda s: F.max_pool2d(relu1[s], 3, 2, ceil_mode=True),
        "max pool 3/2 ceil, NHWC": lambda s: F.max_pool2d(nhwc[s], 3, 2, ceil_mode=True),
        "fire2 concat": lambda s: torch.cat([left[s], right[s]], 1),
    }
    cases = {}
    for name, op in suspects.items():
        cases[(name, 1)] = lambda op=op: [op(slice(i, i + 1)) for i in range(20)]
        cases[(name, 20)] = lambda op=op: op(slice(None))
    with torch.inference_mode():
        seconds = rounds(cases, args.rounds)
    print("\n| 20 images | 20 calls at batch 1, ms | 1 call at batch 20, ms | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name in suspects:
        one, twenty = seconds[(name, 1)] * 1e3, seconds[(name, 20)] * 1e3
        print(f"| {name} | {one:.1f} | {twenty:.1f} | {twenty / one:.2f} |")


if __name__ == "__main__":
    main()
