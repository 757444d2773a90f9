"""``squeezenet demo``: classify the shared photos and evaluate on the labelled images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SqueezeNetError
from .common import add_progress_arg, existing_dir

DEMO_WEIGHTS = [
    "weights/deep-compression/compressed_SqueezeNet.net",
    "weights/ncnn/squeezenet_v1.1.ncnn.param",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="predict on the shared photos and evaluate both weights")
    p.add_argument(
        "--shared", type=existing_dir, metavar="DIR",
        help="the shared data folder (default: $SQUEEZENET_SHARED, or ../shared)",
    )  # fmt: skip
    add_progress_arg(p)
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from ..data.datasets import list_images, shared_dir
    from ..inference.backends import optimize
    from ..inference.pipeline import evaluate, predict
    from ..weights.load import load_model

    shared = Path(args.shared) if args.shared else shared_dir()
    weights = [shared / w for w in DEMO_WEIGHTS]
    if not all(w.exists() for w in weights):
        raise SqueezeNetError(
            f"no pretrained weights at {shared}/weights: the demo uses Song Han's "
            "compressed_SqueezeNet.net and torchvision's squeezenet1_1 as ncnn; point "
            "--shared (or SQUEEZENET_SHARED) at the shared data folder, or fetch them with "
            "'squeezenet download NAME' and run 'squeezenet predict --weights NAME'"
        )
    photos = list_images([shared / "data/photos"])
    for path in weights:
        model = load_model(path)
        info = model.weights_info
        print(f"== {path.name}: {info.arch}, preprocessing '{info.preprocess.name}'")
        forward = optimize(model)
        results, _ = predict(model, photos, topk=5, forward=forward, progress=False)
        for r in results:
            top = ", ".join(f"{t['label']} {t['prob']:.0%}" for t in r["top"])
            print(f"  {Path(r['file']).name:22s} {top}")
        result = evaluate(
            model, shared / "data/imagenet-val", forward=forward, progress=not args.no_progress
        )
        print(
            f"  imagenet-val: top-1 {result['top1']:.1%}  top-5 {result['top5']:.1%}  "
            f"({result['n']} images)"
        )
