"""The old Chainer repo's network against the old code, every backend, and int8 accuracy.

1. Speed, batch 20 at 227x227 on ``--threads`` threads: the old repo's file
   (``chainer-seed-format/weights.npz``, BatchNorm after every Fire) run by the old code
   (``../shared/tools/seed_chainer.py`` in a Chainer venv, timed before and after, so that load
   from other programs falls on both sides) and by every installed backend through
   ``squeezenet.inference.bench`` (the code of ``squeezenet bench``, with the fp32 and int8
   matrix-product floors measured in the same run); then plain v1.0 and v1.1 the same way.
2. Accuracy on ``../shared/data/imagenet-val``: fp32 against int8 (calibrated on Imagenette
   train, never on the evaluated images) for v1.0, v1.1 and the old network carrying Song
   Han's v1.0 weights with its BatchNorm as the identity (the shared seed file is untrained).

    .venv/bin/python benchmarks/bench_old_network.py --chainer /work/chainer-venv/bin/python
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import squeezenet
from squeezenet.data.datasets import list_images, shared_dir
from squeezenet.inference.backends import INT8_BACKENDS, installed_backends, optimize
from squeezenet.inference.bench import bench, format_table
from squeezenet.inference.fold import batch_norm_fires
from squeezenet.inference.pipeline import evaluate
from squeezenet.inference.quantize import calibration_images
from squeezenet.weights.load import create_model

OLD = "weights/chainer-seed-format/weights.npz"
V10 = "weights/deep-compression/compressed_SqueezeNet.net"
V11 = "weights/ncnn/squeezenet_v1.1.ncnn.param"
BATCH = 20


def old_code_seconds(python: str, threads: int, rounds: int) -> float:
    """Median seconds per batch of 20 of ``seed_chainer.py --time`` (NumPy's BLAS threads)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    folder = shared_dir() / "weights/chainer-seed-format"
    command = [python, str(shared_dir() / "tools/seed_chainer.py"), str(folder / "weights.npz")]
    command += [str(folder / "input.npy"), "--time", str(BATCH), str(rounds)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1].rstrip("s"))


def old_network_with_v10_weights() -> torch.nn.Module:
    """squeezenet1_0_chainer holding Song Han's v1.0 weights, each BatchNorm the identity."""
    v10 = squeezenet.load_model(shared_dir() / V10)
    old = create_model("squeezenet1_0_chainer")
    missing = old.load_state_dict(v10.state_dict(), strict=False).missing_keys
    assert all(".bn." in k for k in missing), missing
    for fire in batch_norm_fires(old):
        fire.bn.running_var.fill_(1 - fire.bn.eps)  # y = (x - 0) / sqrt(var + eps) = x
    arch = {"arch": "squeezenet1_0_chainer", "model_kwargs": {}}
    old.weights_info = dataclasses.replace(v10.weights_info, **arch)
    return old.eval()


def accuracy_rows() -> list[str]:
    train, val = shared_dir() / "data/imagenette/train", shared_dir() / "data/imagenet-val"
    rows = []
    for name, model in [
        ("v1.0", squeezenet.load_model(shared_dir() / V10)),
        ("v1.1", squeezenet.load_model(shared_dir() / V11)),
        ("old network, v1.0 weights", old_network_with_v10_weights()),
    ]:
        images = calibration_images(train, model.weights_info.preprocess, progress=False)
        top1 = {}
        for backend in ["onnxruntime", *[b for b in INT8_BACKENDS if b in installed_backends()]]:
            forward = optimize(model, backend, images if backend in INT8_BACKENDS else None)
            top1[backend] = evaluate(model, val, forward=forward, progress=False)["top1"]
        fp32 = top1.pop("onnxruntime")
        int8 = ", ".join(f"{b} {v:.2%} ({(v - fp32) * 100:+.2f})" for b, v in top1.items())
        rows.append(f"| {name} | {fp32:.2%} | {int8} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chainer", required=True, help="python of a venv with Chainer 7.8.1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--part", choices=["speed", "accuracy", "both"], default="both")
    parser.add_argument(
        "--plain",
        choices=["yes", "no", "only"],
        default="yes",
        help="also time plain v1.0 and v1.1 (only: not the old network)",
    )
    parser.add_argument("--backends", type=lambda s: s.split(","), help="default: all installed")
    parser.add_argument(
        "--calibration-images", type=int, default=60,
        help="int8 calibration images for the timing (speed does not depend on it)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()}; {os.cpu_count()} cores", flush=True)
    if args.part != "accuracy":
        speed(args)
    if args.part != "speed":
        print("\n| network | fp32 top-1 | int8 top-1 (points vs fp32) |\n| --- | ---: | --- |")
        accuracy_rows()
    print(f"load average {os.getloadavg()}")


def calibration_folder(count: int) -> Path:
    """A temporary folder linking ``count`` Imagenette train images spread over the classes."""
    files = list_images([shared_dir() / "data/imagenette/train"])
    folder = Path(tempfile.mkdtemp())
    for f in files[:: max(1, len(files) // count)][:count]:
        (folder / f"{f.parent.name}_{f.name}").symlink_to(f)
    return folder


def speed(args: argparse.Namespace) -> None:
    calibration = calibration_folder(args.calibration_images)
    options = {"batches": [BATCH], "threads": [args.threads], "repeats": args.repeats}
    options.update(backends=args.backends, calibration=calibration, progress=False)
    if args.plain != "only":
        old_network_speed(args, options)
    for weights in (V10, V11) if args.plain != "no" else ():
        result = bench(weights=str(shared_dir() / weights), **options)
        print("\n" + format_table(result), flush=True)


def old_network_speed(args: argparse.Namespace, options: dict) -> None:
    before = old_code_seconds(args.chainer, args.threads, 3)
    print(f"old code: {before * 1e3:.0f} ms per batch of {BATCH}", flush=True)
    old = bench(weights=str(shared_dir() / OLD), **options)
    after = old_code_seconds(args.chainer, args.threads, 3)
    print(f"old code again: {after * 1e3:.0f} ms per batch of {BATCH}", flush=True)
    chainer = statistics.mean([before, after])
    print(format_table(old))
    print(f"\n| backend | ms per batch of {BATCH} | vs the old code ({chainer * 1e3:.0f} ms) |")
    print("| --- | ---: | ---: |")
    for r in old["rows"]:
        print(f"| {r['backend']} | {r['seconds'] * 1e3:.1f} | {chainer / r['seconds']:.1f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
