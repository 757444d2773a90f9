"""``squeezenet train``: train from scratch or fine-tune, on one process or under torchrun."""

from __future__ import annotations

import argparse
import dataclasses
import os

from ..engine.checkpoint import load_state
from ..engine.recipes import OPTIMIZERS, SCHEDULES
from ..engine.train import RUN_FIELDS, TrainConfig, train
from ..models import list_models


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """Options shared with ``squeezenet compare``. Left out, each comes from the recipe: the
    architecture's own from scratch, or fine-tuning's with --weights (``squeezenet/engine/
    recipes.py``), or from the saved run with --resume."""
    p.add_argument("--epochs", type=int, help="passes over the training images")
    p.add_argument("--batch-size", type=int, help="global batch per optimizer step")
    p.add_argument("--lr", type=float, help="peak learning rate (the classifier's)")
    p.add_argument(
        "--backbone-lr",
        type=float,
        help="pretrained layers' rate as a fraction of --lr (fine-tuning: 0.05)",
    )
    p.add_argument(
        "--new-head-lr",
        type=float,
        help="a new classifier's rate as a multiple of --lr (fine-tuning: 5)",
    )
    p.add_argument("--momentum", type=float, help="SGD's momentum, or AdamW's beta1")
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="the recipe's by default; give --lr with it (rates differ between the two)",
    )
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup", type=float, help="fraction of steps warming up")
    p.add_argument("--schedule", choices=SCHEDULES, help="decay after the warm-up")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--min-scale", type=float, help="random-resized-crop min area")
    p.add_argument("--image-size", type=int, help="training crop side (default: the arch's)")
    p.add_argument(
        "--val-split",
        type=float,
        help="share of each class held out when DATA has no train/ and val/ (0.2)",
    )
    p.add_argument("--seed", type=int, help="seed of weights init, data order, augmentation")
    p.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        default=None,
        help="decode the images every epoch instead of once into a cache",
    )
    p.add_argument("--micro-batch", type=int, help="images per forward (default 64 CPU, 256 GPU)")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="bfloat16 autocast (default: on when fine-tuning where the CPU or GPU has bf16)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--workers", type=int, help="image decoding processes per training process")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)


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
    p.add_argument("data", metavar="DATA")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="checkpoints, metrics, plots")
    p.add_argument(
        "--arch", help=f"{', '.join(list_models())} (default: the weights', or squeezenet1_1)"
    )
    p.add_argument("--weights", metavar="PATH_OR_NAME", help="start from these weights")
    p.add_argument("--num-classes", type=int, help="default: number of class folders")
    p.add_argument(
        "--freeze-features", action="store_true", default=None, help="train the classifier only"
    )
    p.add_argument(
        "--reset-head",
        action="store_true",
        default=None,
        help="new classifier even for classes the weights know",
    )
    p.add_argument("--save-every", type=int, help="also save the state every N steps")
    p.add_argument("--resume", action="store_true", help="continue the run saved in RUN_DIR")
    add_recipe_args(p)
    p.set_defaults(run=run_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A config from the options given; with --resume, the rest comes from the saved run."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    base = TrainConfig(data=args.data, out=args.out)
    if getattr(args, "resume", False):
        saved = load_state(args.out)["config"]
        base = dataclasses.replace(base, **{k: saved[k] for k in RUN_FIELDS})
    return dataclasses.replace(base, **given)


def run_train(args: argparse.Namespace) -> None:
    result = train(config_from_args(args), resume=args.resume)
    if result.history and os.environ.get("RANK", "0") == "0":
        last = result.history[-1]
        print(
            f"{result.run_dir}: val top-1 {last['val_top1']:.2%} top-5 {last['val_top5']:.2%} "
            f"after {last['epoch']} epochs (best {result.best_top1:.2%}: "
            f"{result.run_dir / 'best.safetensors'})"
        )
