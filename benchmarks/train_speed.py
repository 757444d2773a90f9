"""Training images/s: eager fp32 NCHW against channels_last and bf16 autocast, side by side.

Compute only (random tensors, SGD step) at the issue's setting, v1.0 at batch 128 and 227x227:

    .venv/bin/python benchmarks/train_speed.py --arch squeezenet1_0 --batch 128 --size 227

With ``--data DIR`` (a folder with train/ and val/), it also runs ``squeezenet train`` end to
end for one short epoch per setting (decoding, augmentation and workers included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from squeezenet.models import build_model

SETTINGS = {  # name -> (channels_last, bf16)
    "eager fp32 NCHW": (False, False),
    "channels_last fp32": (True, False),
    "channels_last + bf16 autocast": (True, True),
}


def step_rate(arch: str, batch: int, size: int, steps: int, channels_last: bool, bf16: bool):
    """Median images/s over ``steps`` timed SGD steps (after one warm-up step)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(arch).train().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,))
    rates = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            rates.append(batch / (time.perf_counter() - start))
    return statistics.median(rates)


def end_to_end(data: str, arch: str, batch: int, size: int, bf16: bool, workers: int) -> float:
    """Training images/s of one epoch of ``squeezenet train`` (from its metrics.jsonl)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "squeezenet", "train", data, "--out", f"{tmp}/run",
               "--arch", arch, "--epochs", "1", "--batch-size", str(batch), "--micro-batch",
               str(batch), "--image-size", str(size), "--workers", str(workers),
               "--no-progress"] + (["--bf16"] if bf16 else [])  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        row = json.loads((Path(tmp) / "run/metrics.jsonl").read_text().splitlines()[-1])
    return row["train_images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="squeezenet1_0")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=227)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--data", help="also time squeezenet train end to end on DATA")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    threads = torch.get_num_threads()
    print(f"{args.arch}, batch {args.batch}, {args.size}x{args.size}, torch {torch.__version__}, "
          f"{threads} threads")  # fmt: skip
    print("| setting | img/s | img/s per core | vs eager NCHW |\n|---|---|---|---|")
    base = None
    for name, (cl, bf16) in SETTINGS.items():
        rate = step_rate(args.arch, args.batch, args.size, args.steps, cl, bf16)
        base = base or rate
        print(f"| {name} | {rate:.1f} | {rate / threads:.1f} | {rate / base:.2f}x |", flush=True)
    if args.data:
        print(f"\nend to end, squeezenet train, one epoch, {args.workers} workers:")
        print("| setting | img/s |\n|---|---|")
        for bf16 in (False, True):
            rate = end_to_end(args.data, args.arch, args.batch, args.size, bf16, args.workers)
            print(f"| channels_last{' + bf16' if bf16 else ' fp32'} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
