"""Argument helpers shared by sub-commands."""

from __future__ import annotations

import argparse

import torch

from ..weights.formats import FORMATS
from ..weights.load import load_model


def add_weights_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--weights", required=required, metavar="PATH_OR_NAME",
        help="weights file (any supported format) or a registered name (see 'squeezenet list')",
    )  # fmt: skip
    parser.add_argument("--format", choices=FORMATS, help="weights format, if not detected")
    parser.add_argument("--prototxt", help="Caffe prototxt giving layer shapes and padding")
    parser.add_argument("--preprocess", choices=["caffe", "torchvision"], help="override preset")


def model_from_args(args: argparse.Namespace) -> torch.nn.Module:
    return load_model(
        args.weights, file_format=args.format, prototxt=args.prototxt, preprocess=args.preprocess
    )


def parse_int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
