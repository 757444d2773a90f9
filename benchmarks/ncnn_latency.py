"""Batch-1 and batch-20 latency of the ncnn backend against eager PyTorch, side by side.

The two run in turns within each round (so that other programs slow both alike); the first
round warms up. Prints the minimum and the median per backend and batch, and the load:

    .venv/bin/python benchmarks/ncnn_latency.py [--rounds 10] [--threads 1] WEIGHTS...
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import squeezenet
from squeezenet.inference.backends import optimize

BATCHES = (1, 20)
BACKENDS = ("eager", "ncnn")


def measure(weights: str, rounds: int) -> dict[tuple[str, int], list[float]]:
    """Milliseconds per call for each (backend, batch), ``rounds`` calls each."""
    model = squeezenet.load_model(weights)
    crop = model.weights_info.preprocess.crop
    batches = {b: torch.randn(b, 3, crop, crop) for b in BATCHES}
    forwards = {name: optimize(model, name) for name in BACKENDS}
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in BACKENDS for b in BATCHES}
    for round_ in range(rounds + 1):
        for b, x in batches.items():
            for name, forward in forwards.items():
                start = time.perf_counter()
                forward(x)
                if round_:
                    times[name, b].append(1000 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # the ncnn backend takes the same count
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.2f}")
    for weights in args.weights:
        for (name, b), ms in measure(weights, args.rounds).items():
            print(
                f"{weights}  {name:<6} batch {b:>2}: median {statistics.median(ms):7.1f} ms,"
                f" min {min(ms):7.1f} ms"
            )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
