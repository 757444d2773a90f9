"""``predict`` end to end against the network alone, and the Ray path against the single process.

On the 650 imagenet-val images, side by side in rounds (fp32 ``auto`` backend, batch 32):

* network only: the images decoded and preprocessed once (untimed), then batches of 32;
* evaluate: ``squeezenet.inference.pipeline.evaluate`` on the folder (the same pipeline);
* predict: ``predict_stream`` over the folder (decoding in worker processes while the network
  runs, top-k per image) with every result appended to a JSON-lines file as ``--output`` does;
* with ``--ray``: the start-up of a local Ray instance (``ray.init``), then ``predict_dataset``
  over the same files on it, twice, each after the single process (the first Ray pass also
  starts the actors and loads the model).

    .venv/bin/python benchmarks/bench_predict.py [--rounds 3] [--threads 2] [--ray]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_pipeline import BATCH, WEIGHTS, network_seconds  # the same network-only timing

import squeezenet
from squeezenet.data.datasets import ImageDataset, shared_dir
from squeezenet.inference.backends import optimize
from squeezenet.inference.pipeline import evaluate
from squeezenet.inference.stream import LineWriter, predict_stream


def predict_seconds(model, forward, files: list[Path], out: Path, workers: int | None) -> float:
    start = time.perf_counter()
    with LineWriter(out) as writer:
        for batch in predict_stream(
            model, files, forward=forward, batch_size=BATCH, workers=workers
        ):
            writer.write([json.dumps(r) for r in batch.results])
    seconds = time.perf_counter() - start
    assert sum(1 for _ in out.open()) == len(files)
    out.unlink()
    return seconds


def ray_rows(weights: Path, files: list[Path], threads: int, tmp: Path) -> None:
    """Start a local Ray instance; time it, then passes of ``predict_dataset`` interleaved
    with the single process (``predict_stream``), same weights, backend and batch."""
    import ray

    from squeezenet.inference.ray_predict import predict_dataset

    model = squeezenet.load_model(weights)
    forward = optimize(model)
    start = time.perf_counter()
    ray.init(num_cpus=threads, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    init = time.perf_counter() - start
    print(f"\nRay: ray.init(num_cpus={threads}) {init:.1f} s; {weights.name}, auto, {BATCH}/batch")
    print("| run | seconds | img/s |\n| --- | ---: | ---: |")
    dataset = ray.data.from_items([{"path": str(f)} for f in files])
    for n in (1, 2):
        seconds = predict_seconds(model, forward, files, tmp / "out.jsonl", None)
        print(f"| single process | {seconds:.1f} | {len(files) / seconds:.0f} |")
        start = time.perf_counter()
        rows = predict_dataset(dataset, str(weights), batch_size=BATCH).take_all()
        seconds = time.perf_counter() - start
        assert len(rows) == len(files)
        what = "Ray, first pass (starts the actors, loads the model)" if n == 1 else "Ray, again"
        print(f"| {what} | {seconds:.1f} | {len(files) / seconds:.0f} |")
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workers", type=int, help="decoding processes (default: predict's)")
    parser.add_argument("--ray", action="store_true", help="also time the Ray path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = shared_dir() / "data/imagenet-val"
    files = sorted((data / "images").iterdir())
    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.threads} thread(s)")
    print("| weights | network img/s | evaluate img/s | predict img/s | predict / network |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for weights in WEIGHTS:
            model = squeezenet.load_model(shared_dir() / weights)
            forward = optimize(model)
            preprocess = model.weights_info.preprocess
            images = ImageDataset(files, None, preprocess, draft_size=preprocess.resize)
            batch = torch.stack([images[i][0] for i in range(len(images))])
            seconds = {"network": [], "evaluate": [], "predict": []}
            for _ in range(args.rounds):  # interleaved, so load changes hit all alike
                seconds["network"].append(network_seconds(forward, batch))
                start = time.perf_counter()
                evaluate(model, data, forward=forward, workers=args.workers, progress=False)
                seconds["evaluate"].append(time.perf_counter() - start)
                out = Path(tmp) / "out.jsonl"
                seconds["predict"].append(predict_seconds(model, forward, files, out, args.workers))
            speed = {k: len(files) / statistics.median(v) for k, v in seconds.items()}
            print(
                f"| {Path(weights).name} | {speed['network']:.0f} | {speed['evaluate']:.0f} | "
                f"{speed['predict']:.0f} | {speed['predict'] / speed['network']:.0%} |"
            )
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if args.ray:
            ray_rows(shared_dir() / WEIGHTS[1], files, args.threads, Path(tmp))


if __name__ == "__main__":
    main()
