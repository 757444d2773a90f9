"""``squeezenet train``: train from scratch or fine-tune, on one process or under torchrun."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from ..engine.recipes import OPTIMIZERS, SCHEDULES
from .common import (
    ARCH_CHOICES,
    add_progress_arg,
    batch_size,
    check_image_size,
    existing_dir,
    float_range,
    fraction,
    image_size,
    non_negative_float,
    num_classes,
    positive_float,
    positive_int,
    seed,
    workers,
)

below_one = float_range(0, 1, open_hi=True)  # momentum, warm-up share, label smoothing


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """Options shared with ``squeezenet compare``. Left out, each comes from the recipe: the
    architecture's own from scratch, or fine-tuning's with --weights (``squeezenet/engine/
    recipes.py``), or from the saved run with --resume."""
    p.add_argument("--epochs", type=positive_int, help="passes over the training images")
    p.add_argument("--batch-size", type=positive_int, help="global batch per optimizer step")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (the classifier's)")
    p.add_argument(
        "--backbone-lr",
        type=fraction,
        help="pretrained layers' rate as a fraction of --lr (fine-tuning: 0.05)",
    )
    p.add_argument(
        "--new-head-lr",
        type=positive_float,
        help="a new classifier's rate as a multiple of --lr (fine-tuning: 5)",
    )
    p.add_argument("--momentum", type=below_one, help="SGD's momentum, or AdamW's beta1")
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="the recipe's by default; give --lr with it (rates differ between the two)",
    )
    p.add_argument("--weight-decay", type=non_negative_float, help="L2 penalty of the optimizer")
    p.add_argument("--warmup", type=below_one, help="fraction of steps warming up")
    p.add_argument("--schedule", choices=SCHEDULES, help="decay after the warm-up")
    p.add_argument("--label-smoothing", type=below_one, help="share of the target spread")
    p.add_argument(
        "--min-scale", type=float_range(0, 1, open_lo=True), help="random-resized-crop min area"
    )
    p.add_argument(
        "--image-size", type=image_size,
        help="training crop side, at least the arch's minimum (default: the arch's own)",
    )  # fmt: skip
    p.add_argument(
        "--val-split",
        type=float_range(0, 1, open_lo=True, open_hi=True),
        help="share of each class held out when DATA has no train/ and val/ (0.2)",
    )
    p.add_argument(
        "--seed", type=seed, help="seed of weights init, data order, augmentation (default 0)"
    )
    p.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        default=None,
        help="decode the images every epoch instead of once into a cache",
    )
    p.add_argument(
        "--micro-batch", type=batch_size, help="images per forward (default 64 CPU, 256 GPU)"
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="bfloat16 autocast (default: on when fine-tuning where the CPU or GPU has bf16)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--workers", type=workers, help="image decoding processes per training process")
    add_progress_arg(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune on a folder of class folders",
        description="Train from scratch or fine-tune. DATA is a folder of class folders (a "
        "share of each class is held out for validation) or holds train/ and val/ (ImageFolder "
        "trees or labels.csv folders). Every recipe option left out comes from the "
        "architecture's recipe, or the fine-tuning one with --weights. Run under 'torchrun "
        "--nproc-per-node K' for DDP.",
    )
    p.add_argument("data", metavar="DATA", type=existing_dir)
    p.add_argument(
        "--out", required=True, metavar="RUN_DIR", type=check_out,
        help="checkpoints, metrics, plots",
    )  # fmt: skip
    p.add_argument("--arch", choices=ARCH_CHOICES, help="default: the weights', or squeezenet1_1")
    p.add_argument(
        "--weights", metavar="PATH_OR_NAME",
        help="start from these weights (default: from scratch)",
    )  # fmt: skip
    p.add_argument("--num-classes", type=num_classes, help="default: number of class folders")
    p.add_argument(
        "--freeze-features", action="store_true", default=None, help="train the classifier only"
    )
    p.add_argument(
        "--reset-head",
        action="store_true",
        default=None,
        help="new classifier even for classes the weights know",
    )
    p.add_argument("--save-every", type=positive_int, help="also save the state every N steps")
    p.add_argument("--resume", action="store_true", help="continue the run saved in RUN_DIR")
    add_recipe_args(p)
    p.set_defaults(run=run_train)


def check_out(text: str) -> str:
    """An argparse type: a run folder, new or existing, not a file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a file, not a run folder")
    return text


def config_from_args(args: argparse.Namespace):
    """A config from the options given; the rest stays ``None`` for the engine to resolve
    (from the saved run on --resume, else from the data, the weights and the recipe)."""
    from ..engine.train import TrainConfig

    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    if args.no_progress:
        given["progress"] = False
    return TrainConfig(**given)


def run_train(args: argparse.Namespace) -> None:
    from ..engine.train import train

    config = config_from_args(args)
    if config.image_size is not None:
        check_image_size(_arch(config), config.image_size)
    result = train(config, resume=args.resume)
    if result.history and os.environ.get("RANK", "0") == "0":
        last = result.history[-1]
        print(
            f"{result.run_dir}: val top-1 {last['val_top1']:.2%} top-5 {last['val_top5']:.2%} "
            f"after {last['epoch']} epochs (best {result.best_top1:.2%}: "
            f"{result.run_dir / 'best.safetensors'})"
        )


def _arch(config) -> str:
    """The architecture the run trains: --arch, the weights', or the default."""
    if config.arch:
        return config.arch
    if config.weights:
        from ..weights.load import load_model

        return load_model(config.weights).weights_info.arch
    return "squeezenet1_1"
