"""Training images/s: eager fp32 NCHW against channels_last and bf16 autocast, side by side.

Compute only (random tensors, one SGD step per setting in turn, median per setting), by
default v1.0 at batch 128 and 227x227:

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


class Stepper:
    """One model and optimizer in one setting; ``step()`` times one SGD step in images/s."""

    def __init__(self, arch: str, batch: int, size: int, channels_last: bool, bf16: bool):
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = build_model(arch).train().to(memory_format=fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 1000, (batch,))
        self.bf16 = bf16

    def step(self) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.model(self.x).float(), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return len(self.x) / (time.perf_counter() - start)


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
    p.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    p.add_argument("--data", help="also time squeezenet train end to end on DATA")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    threads = torch.get_num_threads()
    print(f"{args.arch}, batch {args.batch}, {args.size}x{args.size}, torch {torch.__version__}, "
          f"{threads} threads")  # fmt: skip
    print("| setting | img/s | img/s per core | vs eager NCHW |\n|---|---|---|---|")
    steppers = {
        name: Stepper(args.arch, args.batch, args.size, *how) for name, how in SETTINGS.items()
    }
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for i in range(args.steps + 1):  # settings interleaved, so load changes hit them alike
        for name, stepper in steppers.items():
            rate = stepper.step()
            if i:  # the first step of each is a warm-up
                rates[name].append(rate)
    base = statistics.median(rates["eager fp32 NCHW"])
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:.1f} | {rate / threads:.1f} | {rate / base:.2f}x |")
    if args.data:
        print(
            f"\nend to end, squeezenet train, one epoch each, twice in turn, {args.workers} workers"
        )
        print("| setting | img/s (two runs) |\n|---|---|")
        e2e: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(2):
            for bf16 in e2e:
                e2e[bf16].append(end_to_end(args.data, args.arch, args.batch, args.size, bf16,
                                            args.workers))  # fmt: skip
        for bf16, values in e2e.items():
            name = "channels_last + bf16" if bf16 else "channels_last fp32"
            print(f"| {name} | {' / '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
