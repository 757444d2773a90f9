"""``squeezenet info ARCH`` and ``squeezenet list``."""

from __future__ import annotations

import argparse

from .common import ARCH_CHOICES, check_image_size, image_size, num_classes


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="parameters, size and multiply-accumulates of an arch")
    p.add_argument("arch", choices=ARCH_CHOICES)
    p.add_argument(
        "--image-size", type=image_size,
        help="input side, at least the arch's minimum (default: the arch's own)",
    )  # fmt: skip
    p.add_argument("--num-classes", type=num_classes, default=1000, help="classifier outputs")
    p.set_defaults(run=run_info)
    p = subparsers.add_parser("list", help="architectures and named weights")
    p.set_defaults(run=run_list)


def run_info(args: argparse.Namespace) -> None:
    from ..models import build_model, default_input_size
    from ..models.stats import model_stats

    check_image_size(args.arch, args.image_size)
    size = args.image_size or default_input_size(args.arch)
    stats = model_stats(build_model(args.arch, num_classes=args.num_classes), size)
    print(f"{args.arch} at {size}x{size}, {args.num_classes} classes")
    print(f"  parameters        {stats['params']:,} ({stats['params'] / 1e6:.3f} M)")
    print(f"  float32 size      {stats['size_mb']:.2f} MB (4 bytes per parameter, 10^6 B/MB)")
    print(f"  multiply-accumulates per image  {stats['macs'] / 1e9:.3f} G "
          "(conv and linear layers; 1 MAC = 2 FLOPs)")  # fmt: skip


def run_list(args: argparse.Namespace) -> None:
    from ..models import list_models
    from ..weights.entries import ENTRIES

    print("architectures:", ", ".join(list_models()))
    print("named weights:")
    for e in ENTRIES.values():
        print(f"  {e.name:34s} {e.arch:14s} {e.file_format:17s} {e.preprocess:12s} {e.url}")
