"""``squeezenet quantize``: weights -> static int8 ONNX, calibrated on real images."""

from __future__ import annotations

import argparse

from ..inference.quantize import METHODS, NUM_IMAGES, quantize
from .common import add_weights_args, model_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quantize", help="weights -> int8 ONNX (static, calibrated)")
    add_weights_args(p)
    p.add_argument("--calibration", required=True, metavar="DIR", help="images to calibrate on")
    p.add_argument("-o", "--output", required=True, metavar="FILE.onnx")
    p.add_argument("--num-images", type=int, default=NUM_IMAGES, help="spread over DIR")
    p.add_argument("--method", choices=METHODS, default="percentile", help="activation ranges")
    p.set_defaults(run=run_quantize)


def run_quantize(args: argparse.Namespace) -> None:
    model = model_from_args(args)
    n = quantize(
        model, args.calibration, args.output, num_images=args.num_images, method=args.method
    )
    print(f"{args.output}: {model.weights_info.arch} int8, calibrated on {n} images")
