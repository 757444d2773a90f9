"""``evaluate`` end to end against the network alone, and int8 accuracy against fp32.

For both real weights and two backends, fp32 ``auto`` (ONNX Runtime) and the int8 file that
``squeezenet quantize`` writes (calibrated on Imagenette training images, never on the images
evaluated), this measures side by side, in rounds:

* network only: the preprocessed imagenet-val images (decoded once, untimed) in batches of 32;
* end to end: ``squeezenet.inference.pipeline.evaluate`` on the folder (decoding in DataLoader
  workers while the network runs), which also gives top-1 / top-5; once per ``--workers``
  value (default: evaluate's own choice), in the same rounds.

    .venv/bin/python benchmarks/bench_pipeline.py [--rounds 3] [--threads 2] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import squeezenet
from squeezenet.data.datasets import labelled_folder, shared_dir
from squeezenet.inference.backends import OnnxModel, optimize
from squeezenet.inference.pipeline import default_workers, evaluate
from squeezenet.inference.quantize import quantize

WEIGHTS = [
    "weights/deep-compression/compressed_SqueezeNet.net",
    "weights/ncnn/squeezenet_v1.1.ncnn.param",
]
BATCH = 32


def network_seconds(forward, images: torch.Tensor) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), BATCH):
        forward(images[i : i + BATCH])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--workers", type=lambda s: [int(v) for v in s.split(",")], default=[None],
        help="decoding processes, comma-separated (default: evaluate's)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = shared_dir() / "data/imagenet-val"
    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.threads} thread(s)")
    print("| weights | backend | workers | network img/s | evaluate img/s | ratio | top-1 | top-5")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---:")
    drops = []
    with tempfile.TemporaryDirectory() as tmp:
        for weights in WEIGHTS:
            model = squeezenet.load_model(shared_dir() / weights)
            int8_path = Path(tmp) / "int8.onnx"
            quantize(model, shared_dir() / "data/imagenette/train", int8_path, progress=False)
            preprocess = model.weights_info.preprocess
            dataset = labelled_folder(data, preprocess, draft_size=preprocess.resize)
            images = torch.stack([dataset[i][0] for i in range(len(dataset))])
            top1 = {}
            for name, runner in [("auto (fp32)", model), ("int8 file", OnnxModel(int8_path))]:
                forward = optimize(runner, "auto")
                forward(images[:BATCH])  # warm-up
                network, end_to_end = [], {w: [] for w in args.workers}
                for _ in range(args.rounds):
                    network.append(len(images) / network_seconds(forward, images))
                    for workers in args.workers:
                        start = time.perf_counter()
                        result = evaluate(
                            runner, data, forward=forward, batch_size=BATCH, workers=workers,
                            progress=False,
                        )  # fmt: skip
                        end_to_end[workers].append(result["n"] / (time.perf_counter() - start))
                net = statistics.median(network)
                top1[name] = result["top1"]
                for workers, rates in end_to_end.items():
                    e2e = statistics.median(rates)
                    print(
                        f"| {model.weights_info.arch} | {name} | {workers or default_workers()} "
                        f"| {net:.0f} | {e2e:.0f} | {e2e / net:.0%} | {result['top1']:.2%} "
                        f"| {result['top5']:.2%}",
                        flush=True,
                    )
            drops.append(
                f"{model.weights_info.arch}: int8 top-1 - fp32 top-1 = "
                f"{(top1['int8 file'] - top1['auto (fp32)']) * 100:+.2f} points"
            )
    print("\n".join(drops))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
