"""``squeezenet export``: weights -> a file for a deploy target (ONNX, ...)."""

from __future__ import annotations

import argparse

from ..errors import SqueezeNetError
from ..inference.export import TARGETS, export
from ..weights.load import load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="weights -> a file for a deploy target")
    p.add_argument("--weights", required=True, metavar="PATH_OR_NAME", help="any weights file")
    p.add_argument("--format", choices=TARGETS, default="onnx", help="deploy target")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size, not 1")
    p.add_argument(
        "--int8", action="store_true", help="executorch: static int8 (needs --calibration)"
    )
    p.add_argument(
        "--calibration", metavar="DIR",
        help="int8: images to calibrate on (e.g. ../shared/data/imagenet-sample for 1000-class "
        "models); never the images it will be evaluated on",
    )  # fmt: skip
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    if (args.int8 or args.calibration) and args.format != "executorch":
        raise SqueezeNetError("--int8 and --calibration are for --format executorch")
    if args.int8 and not args.calibration:
        raise SqueezeNetError("--int8 needs --calibration DIR (images not used for evaluation)")
    model = load_model(args.weights)
    batch = "N" if args.dynamic_batch else "1"
    options = {"dynamic_batch": args.dynamic_batch} if args.format == "onnx" else {}
    if args.format == "executorch":
        options, batch = {"int8": args.int8, "calibration": args.calibration}, "N"
    export(model, args.output, args.format, **options)
    info = model.weights_info
    size = info.preprocess.crop
    print(
        f"{args.output}: {info.arch} as {args.format}{' int8' if args.int8 else ''}, "
        f"input ({batch}, 3, {size}, {size}) after {info.preprocess.name} preprocessing"
    )
