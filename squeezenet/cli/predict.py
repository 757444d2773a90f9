"""``squeezenet predict`` and ``squeezenet evaluate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..data.datasets import list_images
from ..errors import SqueezeNetError
from ..inference.backends import BACKENDS, open_onnx, optimize
from ..inference.pipeline import evaluate, predict
from .common import add_weights_args, model_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="top-k classes of images")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    add_weights_args(p)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--save-logits", metavar="F.npy", help="write (N, classes) float32 logits")
    _add_run_args(p)
    p.set_defaults(run=run_predict)

    p = subparsers.add_parser("evaluate", help="top-1/top-5 on a labelled folder")
    p.add_argument("data", metavar="DATA", help="folder with labels.csv, or an ImageFolder tree")
    add_weights_args(p)
    p.add_argument("--json", action="store_true", help='print {"top1", "top5", "n"}')
    _add_run_args(p)
    p.set_defaults(run=run_evaluate)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, help="image decoding processes (default: cores)")
    p.add_argument("--calibration", metavar="DIR", help="images to calibrate onnxruntime-int8 on")


def _model_and_forward(args: argparse.Namespace) -> tuple:
    """The model (an .onnx file may run as it is) and its forward through --backend."""
    model = open_onnx(args.weights, args.backend, args.preprocess) or model_from_args(args)
    example = None
    if args.calibration and args.backend == "onnxruntime-int8":
        from ..inference.quantize import calibration_images

        preprocess = model.weights_info.preprocess
        example = calibration_images(args.calibration, preprocess, progress=not args.json)
    return model, optimize(model, args.backend, example)


def run_predict(args: argparse.Namespace) -> None:
    if args.topk < 1:
        raise SqueezeNetError("--topk must be at least 1")
    files = list_images(args.images)
    model, forward = _model_and_forward(args)
    results, logits = predict(
        model, files, topk=args.topk, forward=forward, batch_size=args.batch_size,
        workers=args.workers, progress=not args.json,
    )  # fmt: skip
    if args.save_logits:
        np.save(Path(args.save_logits), logits.astype(np.float32))
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(r["file"])
            for t in r["top"]:
                print(f"  {t['prob']:7.2%}  {t['label']}  ({t['index']})")


def run_evaluate(args: argparse.Namespace) -> None:
    model, forward = _model_and_forward(args)
    result = evaluate(
        model, args.data, forward=forward, batch_size=args.batch_size, workers=args.workers,
        progress=not args.json,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        skipped = f", {result['skipped']} unreadable skipped" if result["skipped"] else ""
        print(
            f"{args.data}: top-1 {result['top1']:.2%}  top-5 {result['top5']:.2%}  "
            f"({result['n']} images{skipped})"
        )
