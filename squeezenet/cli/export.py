"""``squeezenet export``: weights -> a file for a deploy target (ONNX, ...)."""

from __future__ import annotations

import argparse

from ..errors import SqueezeNetError
from .common import LazyChoices, existing_dir, output_path, weights_or_default

INT8_TARGETS = ("executorch", "web")  # the targets that write int8 models (--int8)


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
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", type=output_path,
        help="the file to write (web: the folder)",
    )  # fmt: skip
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: any batch size, not 1")
    p.add_argument(
        "--int8", action="store_true", help="executorch, web: static int8 (needs --calibration)"
    )
    p.add_argument(
        "--calibration", metavar="DIR", type=existing_dir,
        help="int8: images to calibrate on (e.g. ../shared/data/imagenet-sample for 1000-class "
        "models); never the images it will be evaluated on",
    )  # fmt: skip
    p.add_argument("--fp16", action="store_true", help="ncnn: float16 weights (half the size)")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from ..inference.export import export
    from ..weights.load import load_model

    if (args.int8 or args.calibration) and args.format not in INT8_TARGETS:
        raise SqueezeNetError("--int8 and --calibration are for --format executorch or web")
    if args.int8 and not args.calibration:
        raise SqueezeNetError("--int8 needs --calibration DIR (images not used for evaluation)")
    model = load_model(weights_or_default(args))
    if args.fp16 and args.format != "ncnn":
        raise SqueezeNetError("--fp16 is for --format ncnn")
    options = {"onnx": {"dynamic_batch": args.dynamic_batch}, "ncnn": {"fp16": args.fp16}}
    options |= {name: {"int8": args.int8, "calibration": args.calibration} for name in INT8_TARGETS}
    export(model, args.output, args.format, **options.get(args.format, {}))
    info = model.weights_info
    size = info.preprocess.crop
    # pt2 and executorch programs take any batch (executorch's up to its bound)
    batch = "N" if args.dynamic_batch or args.format in ("pt2", "executorch") else "1"
    print(
        f"{args.output}: {info.arch} as {args.format}{' int8' if args.int8 else ''}, "
        f"input ({batch}, 3, {size}, {size}) after {info.preprocess.name} preprocessing"
    )
