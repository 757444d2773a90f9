"""``squeezenet quantize``: weights -> static int8 ONNX, calibrated on real images."""

from __future__ import annotations

import argparse

from .common import (
    Deferred,
    LazyChoices,
    add_progress_arg,
    add_weights_args,
    existing_dir,
    model_from_args,
    output_file,
    positive_int,
)


def _num_images() -> int:
    from ..inference.quantize import NUM_IMAGES  # onnxruntime.quantization: slow to import

    return NUM_IMAGES


def _methods() -> list[str]:
    from ..inference.quantize import METHODS

    return list(METHODS)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quantize", help="weights -> int8 ONNX (static, calibrated)")
    add_weights_args(p)
    p.add_argument(
        "--calibration", required=True, metavar="DIR", type=existing_dir,
        help="images to calibrate on",
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, metavar="FILE.onnx", type=output_file)
    p.add_argument(
        "--num-images", type=positive_int, default=Deferred(_num_images),
        help="calibration images, spread over DIR",
    )  # fmt: skip
    p.add_argument(
        "--method", choices=LazyChoices(_methods), default="percentile", help="activation ranges"
    )
    add_progress_arg(p)
    p.set_defaults(run=run_quantize)


def run_quantize(args: argparse.Namespace) -> None:
    from ..inference.quantize import quantize

    model = model_from_args(args)
    n = quantize(
        model, args.calibration, args.output, num_images=args.num_images, method=args.method,
        progress=not args.no_progress,
    )  # fmt: skip
    print(f"{args.output}: {model.weights_info.arch} int8, calibrated on {n} images")
