"""``squeezenet bench``: every backend side by side against the measured arithmetic floor."""

from __future__ import annotations

import argparse
import json

from ..inference.backends import installed_backends
from ..inference.bench import bench, format_table
from ..models import list_models
from .common import parse_int_list


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="time every backend against the arithmetic floor")
    p.add_argument("--arch", choices=list_models(), help="architecture (default: the weights')")
    p.add_argument("--weights", metavar="PATH_OR_NAME", help="weights (default: random)")
    p.add_argument("--batch", type=parse_int_list, default=[1, 20], help="e.g. 1,20")
    p.add_argument("--threads", type=parse_int_list, default=None, help="e.g. 1,2 (default: all)")
    backends = installed_backends()
    p.add_argument(
        "--backends", type=lambda s: s.split(","), default=None,
        help=f"comma-separated subset of {','.join(backends)} (default: all; for a .pte file, "
        "the executorch backend of its kind)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=10, help="timed runs (median reported)")
    p.add_argument("--calibration", metavar="DIR", help="int8 calibration images (default: noise)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> None:
    result = bench(
        args.arch, args.weights, batches=args.batch, threads=args.threads, backends=args.backends,
        repeats=args.repeats, calibration=args.calibration, progress=not args.json,
    )  # fmt: skip
    print(json.dumps(result, indent=1) if args.json else format_table(result))
