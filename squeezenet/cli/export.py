"""``squeezenet export``: weights -> ONNX (carrying its preprocessing) or TorchScript."""

from __future__ import annotations

import argparse

from ..inference.export import FORMATS, export
from ..weights.load import load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="weights -> ONNX or TorchScript")
    p.add_argument("--weights", required=True, metavar="PATH_OR_NAME", help="any weights file")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="output format")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size, not 1")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    model = load_model(args.weights)
    export(model, args.output, args.format, dynamic_batch=args.dynamic_batch)
    info = model.weights_info
    size = info.preprocess.crop
    batch = "N" if args.dynamic_batch or args.format == "torchscript" else "1"
    print(
        f"{args.output}: {info.arch} as {args.format}, input ({batch}, 3, {size}, {size}) "
        f"after {info.preprocess.name} preprocessing"
    )
