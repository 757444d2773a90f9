"""``squeezenet export``: weights -> a file for a deploy target (ONNX, ...)."""

from __future__ import annotations

import argparse

from ..inference.export import TARGETS, export
from ..weights.load import load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="weights -> a file for a deploy target")
    p.add_argument("--weights", required=True, metavar="PATH_OR_NAME", help="any weights file")
    p.add_argument("--format", choices=TARGETS, default="onnx", help="deploy target")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size, not 1")
    p.add_argument("--fp16", action="store_true", help="ncnn: float16 weights (half the size)")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    model = load_model(args.weights)
    options = {"onnx": {"dynamic_batch": args.dynamic_batch}, "ncnn": {"fp16": args.fp16}}
    export(model, args.output, args.format, **options.get(args.format, {}))
    info = model.weights_info
    size = info.preprocess.crop
    batch = "N" if args.dynamic_batch else "1"
    print(
        f"{args.output}: {info.arch} as {args.format}, input ({batch}, 3, {size}, {size}) "
        f"after {info.preprocess.name} preprocessing"
    )
