"""``squeezenet export``: weights -> a file for a deploy target (ONNX, ...)."""

from __future__ import annotations

import argparse

from .common import LazyChoices, output_file, weights_or_default


def _targets() -> tuple[str, ...]:
    from ..inference.export import TARGETS

    return TARGETS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="weights -> a file for a deploy target")
    p.add_argument(
        "--weights", metavar="PATH_OR_NAME",
        help="any weights file or name (default: pretrained weights found on this machine, said "
        "on stderr)",
    )  # fmt: skip
    p.add_argument("--format", choices=LazyChoices(_targets), default="onnx", help="deploy target")
    p.add_argument("-o", "--output", required=True, metavar="FILE", type=output_file)
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size, not 1")
    p.add_argument("--int8", action="store_true", help="web: an int8 model (needs --calibration)")
    p.add_argument("--calibration", metavar="DIR", help="web --int8: training images to calibrate")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from ..inference.export import export
    from ..weights.load import load_model

    model = load_model(weights_or_default(args))
    options = {"dynamic_batch": args.dynamic_batch} if args.format == "onnx" else {}
    if args.format == "web":
        options = {"int8": args.int8, "calibration": args.calibration}
    export(model, args.output, args.format, **options)
    info = model.weights_info
    size = info.preprocess.crop
    batch = "N" if args.dynamic_batch or args.format == "pt2" else "1"  # pt2: always any batch
    print(
        f"{args.output}: {info.arch} as {args.format}, input ({batch}, 3, {size}, {size}) "
        f"after {info.preprocess.name} preprocessing"
    )
