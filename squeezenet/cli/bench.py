"""``squeezenet bench``: every backend side by side against the measured arithmetic floor."""

from __future__ import annotations

import argparse
import json

from .common import (
    ARCH_CHOICES,
    BACKEND_CHOICES,
    MAX_BATCH,
    MAX_THREADS,
    add_progress_arg,
    existing_dir,
    int_list,
    int_range,
    weights_or_default,
)


def backend_list(text: str) -> list[str]:
    """An argparse type: comma-separated backends, each one of ``BACKEND_CHOICES``."""
    names = [b for b in text.split(",") if b]
    unknown = [b for b in names if b not in BACKEND_CHOICES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown backend(s) {','.join(unknown) or repr(text)}; choose from "
            f"{','.join(BACKEND_CHOICES)}"
        )
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="time every backend against the arithmetic floor")
    p.add_argument(
        "--arch", choices=ARCH_CHOICES,
        help="architecture, with random weights unless --weights is given (the time is the "
        "same); default: the weights'",
    )  # fmt: skip
    p.add_argument(
        "--weights", metavar="PATH_OR_NAME",
        help="weights (default: pretrained weights found on this machine, said on stderr; with "
        "--arch, random ones: the time is the same)",
    )  # fmt: skip
    p.add_argument(
        "--batch", type=int_list(1, MAX_BATCH), default=[1, 20], help="batch sizes, e.g. 1,20"
    )
    p.add_argument(
        "--threads", type=int_list(1, MAX_THREADS), help="e.g. 1,2 (default: torch's count)"
    )
    p.add_argument(
        "--backends", type=backend_list,
        help="comma-separated (default: every installed backend but auto; for a .pte file, the "
        "executorch backend of its kind)",
    )  # fmt: skip
    p.add_argument(
        "--repeats", type=int_range(1, 10_000), default=10, help="timed runs (median reported)"
    )
    p.add_argument(
        "--calibration", metavar="DIR", type=existing_dir,
        help="int8 calibration images (default: noise)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_progress_arg(p)
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> None:
    from ..inference.bench import bench, format_table

    if args.arch is None:
        weights_or_default(args)
    result = bench(
        args.arch, args.weights, batches=args.batch, threads=args.threads, backends=args.backends,
        repeats=args.repeats, calibration=args.calibration,
        progress=not (args.json or args.no_progress),
    )  # fmt: skip
    print(json.dumps(result, indent=1) if args.json else format_table(result))
