"""Training images/s end to end with the decoded-image cache against without it, side by side.

Each round runs ``squeezenet train`` with ``--no-cache`` and with the cache (already built by a
first, untimed run), same settings otherwise, for ``--epochs`` epochs, and reads the last
epoch's training images/s from metrics.jsonl: the first epoch also pays for one-off set-up (the
first steps build the CPU kernels, the optimizer's first step imports code), which in short
epochs hides the rate. The network alone (random tensors, same batch, same
threads) gives the ceiling, so ``1 - end-to-end / network`` is the share of the time the steps
spend waiting for images: decoding and augmentation. The rest of each run's wall time (its
validation, with the validation images cached or decoded, plus set-up and saving, alike in
both) is shown beside it.

    .venv/bin/python benchmarks/train_cache.py ../shared/data/imagenette --per-class 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from squeezenet.engine.distributed import native_bf16
from squeezenet.engine.recipes import scratch_recipe
from squeezenet.models import build_model


def subset(data: Path, per_class: int, val_per_class: int, root: Path) -> Path:
    """``root/train`` and ``root/val``: the first images of each class (links)."""
    for split, n in (("train", per_class), ("val", val_per_class)):
        for cls in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            (root / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                (root / split / cls.name / f.name).symlink_to(f.resolve())
    return root


def epoch_rate(data: Path, out: Path, args, cache: bool) -> tuple[float, float]:
    """Training images/s of the last epoch, and the seconds of the run spent outside its steps."""
    cmd = [
        sys.executable,
        "-m",
        "squeezenet",
        "train",
        str(data),
        "--out",
        str(out),
        "--arch",
        args.arch,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch),
        "--image-size",
        str(args.size),
        "--workers",
        str(args.workers),
        "--no-progress",
    ]
    cmd += ["--bf16"] if native_bf16(torch.device("cpu")) else []  # as network_rate computes
    subprocess.run(cmd + ([] if cache else ["--no-cache"]), check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    starts = [0] + [r["step"] for r in rows[:-1]]
    in_steps = sum(
        (r["step"] - start) * args.batch / r["train_images_per_s"]
        for start, r in zip(starts, rows, strict=True)
    )
    return rows[-1]["train_images_per_s"], rows[-1]["elapsed_s"] - in_steps


def network_rate(arch: str, batch: int, size: int, classes: int, steps: int = 4) -> float:
    """Steps of the network alone on random tensors with its recipe's optimizer (channels_last,
    and bf16 autocast where the CPU computes bf16, as the timed ``squeezenet train`` runs are
    told to)."""
    bf16 = native_bf16(torch.device("cpu"))
    model = build_model(arch, num_classes=classes).train().to(memory_format=torch.channels_last)
    params = model.parameters()
    if scratch_recipe(arch).optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=0.001)
    else:
        opt = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, help="a folder with train/ and val/ class folders")
    p.add_argument("--per-class", type=int, default=100, help="training images per class")
    p.add_argument("--val-per-class", type=int, help="validation images per class (per-class/4)")
    p.add_argument("--arch", default="squeezenet1_1")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, help="the batch (default: the arch's recipe's)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2, help="per run; the last one is timed")
    args = p.parse_args()
    args.batch = args.batch or scratch_recipe(args.arch).batch_size  # what `train` uses
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SQUEEZENET_HOME"] = f"{tmp}/home"  # a cache of its own, built once below
        val = args.val_per_class or max(args.per_class // 4, 1)
        data = subset(args.data, args.per_class, val, Path(tmp) / "data")
        classes = len(list((data / "train").iterdir()))
        epoch_rate(data, Path(tmp) / "warm", args, cache=True)
        rates: dict[str, list[float]] = {"no cache": [], "cache": [], "network alone": []}
        rest: dict[str, list[float]] = {"no cache": [], "cache": []}
        for r in range(args.rounds):  # interleaved, so load changes hit every setting alike
            for cache in (False, True):
                name = "cache" if cache else "no cache"
                rate, seconds = epoch_rate(data, Path(tmp) / f"run-{r}-{cache}", args, cache)
                rates[name].append(rate)
                rest[name].append(seconds)
            rates["network alone"].append(network_rate(args.arch, args.batch, args.size, classes))
    load = os.getloadavg()[0]
    print(
        f"{args.arch}, {args.size}px, batch {args.batch}, {args.workers} workers, "
        f"epoch {args.epochs} of {args.epochs} timed, "
        f"{torch.get_num_threads()} threads, {args.per_class} train + {val} val images/class, "
        f"{'bf16 autocast' if native_bf16(torch.device('cpu')) else 'fp32'}, "
        f"load average {load:.1f}"
    )
    net = statistics.median(rates["network alone"])
    base = statistics.median(rates["no cache"])
    print(
        "| setting | img/s (each round) | median | vs no cache | time waiting for images "
        "| s outside the steps: validation, set-up (median) |"
    )
    print("|---|---|---|---|---|---|")
    for name, values in rates.items():
        rate = statistics.median(values)
        waiting = f"{max(0.0, 1 - rate / net):.0%}" if name != "network alone" else ""
        outside = f"{statistics.median(rest[name]):.1f}" if name in rest else ""
        print(
            f"| {name} | {' / '.join(f'{v:.1f}' for v in values)} | {rate:.1f} | "
            f"{rate / base:.2f}x | {waiting} | {outside} |"
        )


if __name__ == "__main__":
    main()
