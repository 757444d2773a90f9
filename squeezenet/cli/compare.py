"""``squeezenet compare``: train several architectures from scratch and tabulate them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import SqueezeNetError
from .common import check_image_size, existing_dir
from .train import add_recipe_args, check_out, config_from_args

DEFAULT_ARCHS = "squeezenet1_0,squeezenet1_1,zfnet,alexnet"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train archs from scratch, each by its own recipe; table and bar chart",
        description="Train each architecture from scratch by its own recipe (options given "
        "apply to all), then write OUT/compare.md (Markdown table), compare.json and "
        "compare.png (bar chart).",
    )
    p.add_argument(
        "data", metavar="DATA", type=existing_dir,
        help="folder of class folders, or with train/ and val/",
    )  # fmt: skip
    p.add_argument(
        "--same-recipe",
        action="store_true",
        help="train every arch with the first one's recipe instead of its own",
    )
    p.add_argument("--archs", default=DEFAULT_ARCHS, help="comma-separated architectures")
    p.add_argument(
        "--out", default="runs/compare", metavar="DIR", type=check_out,
        help="parent folder of the runs",
    )  # fmt: skip
    add_recipe_args(p)
    p.set_defaults(run=run_compare)


def run_compare(args: argparse.Namespace) -> None:
    from ..engine.compare import compare, markdown_table
    from ..models import list_models

    archs = [a for a in args.archs.split(",") if a]
    unknown = sorted(set(archs) - set(list_models()))
    if unknown:
        raise SqueezeNetError(
            f"unknown architecture(s) {', '.join(unknown)}; see 'squeezenet list'"
        )
    for arch in archs:
        check_image_size(arch, args.image_size)
    rows = compare(archs, config_from_args(args), same_recipe=args.same_recipe)
    if os.environ.get("RANK", "0") == "0":
        print(markdown_table(rows), end="")
        print(f"written: {Path(args.out) / 'compare.md'}, compare.json, compare.png")
