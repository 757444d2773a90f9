"""``squeezenet predict`` and ``squeezenet evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import SqueezeNetError
from .common import (
    BACKEND_CHOICES,
    add_progress_arg,
    add_weights_args,
    batch_size,
    existing_dir,
    model_from_args,
    output_file,
    positive_int,
    weights_or_default,
    workers,
)

DEFAULT_TOPK = 5  # as serve's ?topk=; cut to the class count of a model with fewer


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="top-k classes of images, streamed; unreadable files skipped (exit 1)"
    )
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR", help="files or folders (recursive)")
    p.add_argument("--files-from", metavar="LIST", help="more image paths, one a line ('-': stdin)")
    add_weights_args(p)
    p.add_argument(
        "--topk", type=positive_int,
        help="classes per image, 1 to the model's class count: more is an error, as in serve "
        "(default: 5, or the class count when the model has fewer)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument(
        "--output", metavar="OUT.jsonl", type=output_file,
        help="append the JSON lines to this file (written batch by batch, fsynced every second)",
    )  # fmt: skip
    p.add_argument(
        "--resume", action="store_true", help="skip the files already in --output (after a kill)"
    )
    p.add_argument(
        "--shard", metavar="I/N", help="run shard I of N: every N-th of the sorted inputs from I"
    )
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    add_progress_arg(p)
    p.add_argument(
        "--ray", nargs="?", const="", metavar="ADDRESS",
        help="run on a Ray cluster (pip install 'squeezenet[ray]'); no ADDRESS: a local one, "
        "or the one 'ray start' made on this machine",
    )  # fmt: skip
    p.add_argument(
        "--save-logits", metavar="F.npy", type=output_file, help="write (N, classes) float32 logits"
    )
    _add_run_args(p)
    p.set_defaults(run=run_predict)

    p = subparsers.add_parser("evaluate", help="top-1/top-5 on a labelled folder")
    p.add_argument(
        "data", metavar="DATA", type=existing_dir,
        help="folder with labels.csv, or an ImageFolder tree",
    )  # fmt: skip
    add_weights_args(p)
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"top1", "top5", "n", "skipped"} (docs/predict.md)',
    )
    add_progress_arg(p)
    _add_run_args(p)
    p.set_defaults(run=run_evaluate)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend", choices=BACKEND_CHOICES, default="auto", help="see docs/inference.md"
    )
    p.add_argument("--batch-size", type=batch_size, default=32, help="images per forward pass")
    p.add_argument(
        "--workers", type=workers, help="image decoding processes (default: cores - 1, at most 4)"
    )
    p.add_argument(
        "--calibration", metavar="DIR", type=existing_dir,
        help="images to calibrate an int8 backend on",
    )  # fmt: skip


def _model_and_forward(args: argparse.Namespace, topk: int | None = None) -> tuple:
    """The model (an .onnx file may run as it is) and its forward through --backend; ``topk``
    is checked against the model's classes before the backend is built."""
    from ..inference.backends import INT8_BACKENDS, open_file, optimize

    weights = weights_or_default(args)
    model = open_file(weights, args.backend, args.preprocess) or model_from_args(args)
    classes = model.weights_info.num_classes
    if topk is not None and topk > classes:
        raise SqueezeNetError(f"--topk {topk}: the model has {classes} classes")
    example = None
    if args.calibration and args.backend in INT8_BACKENDS:
        from ..inference.quantize import calibration_images

        preprocess = model.weights_info.preprocess
        example = calibration_images(args.calibration, preprocess, progress=_progress(args))
    return model, optimize(model, args.backend, example)


def _progress(args: argparse.Namespace) -> bool:
    return not (args.json or args.no_progress)


def run_predict(args: argparse.Namespace) -> int:
    """Stream results as they come; 1 when images were skipped, 0 when all were read."""
    from ..inference.stream import collect_inputs, completed_files, parse_shard, shard

    if args.resume and not args.output:
        raise SqueezeNetError("--resume continues an --output file; pass --output OUT.jsonl")
    if args.save_logits and args.resume:
        raise SqueezeNetError("--save-logits cannot be resumed (it holds every row); drop one")
    files = collect_inputs(args.images, args.files_from)
    if args.shard:
        files = shard(files, *parse_shard(args.shard))
    done = completed_files(args.output) if args.resume else set()
    if args.output and not args.resume and Path(args.output).is_file():
        if Path(args.output).stat().st_size:
            raise SqueezeNetError(
                f"{args.output}: already has results; pass --resume to continue it, or remove it"
            )
    todo = [f for f in files if f not in done]
    weights_or_default(args)
    if args.ray is not None:
        batches = _ray_batches(args, todo)
    else:
        from ..inference.stream import predict_stream

        model, forward = _model_and_forward(args, args.topk)
        topk = args.topk or min(DEFAULT_TOPK, model.weights_info.num_classes)
        batches = predict_stream(
            model, todo, topk=topk, forward=forward, batch_size=args.batch_size,
            workers=args.workers,
        )  # fmt: skip
    return _write(args, batches, total=len(files), already=len(files) - len(todo))


def _ray_batches(args: argparse.Namespace, files: list[str]) -> Iterator:
    from ..inference.ray_predict import predict_ray, require_ray

    require_ray()  # now, not when the first batch is asked for
    if args.calibration or args.save_logits:
        raise SqueezeNetError(
            "--ray takes neither --calibration (quantize the model first) nor --save-logits"
        )
    return predict_ray(
        files, args.weights, backend=args.backend, topk=args.topk or DEFAULT_TOPK,
        batch_size=args.batch_size, address=args.ray or None, preprocess=args.preprocess,
        file_format=args.format,
    )  # fmt: skip


def _write(args: argparse.Namespace, batches: Iterator, total: int, already: int) -> int:
    """Write each batch as it comes: to --output (JSON lines), else stdout; count the skipped."""
    import numpy as np
    from tqdm import tqdm

    from ..inference.stream import LineWriter

    bar = tqdm(
        total=total, initial=already, unit="img", desc="predict", file=sys.stderr,
        disable=True if args.no_progress else None,  # None: shown on a terminal only
    )  # fmt: skip
    shown = not bar.disable  # bar.close() sets disable: read it now for the closing line
    writer = LineWriter(args.output) if args.output else None
    logits, skipped, written, start = [], 0, 0, time.perf_counter()
    try:
        for batch in batches:
            stop = batch.failures[0][1] if args.strict and batch.failures else None
            if stop:
                batch = batch.until_first_failure()
            for _, reason in batch.failures:
                tqdm.write(f"squeezenet predict: skipped {_one_line(reason)}", file=sys.stderr)
            skipped += len(batch.failures)
            if writer:
                writer.write([json.dumps(r) for r in batch.results])
            else:
                _print(batch.results, args.json)
            if args.save_logits:
                logits.append(batch.logits)
            written += len(batch.results)
            bar.update(len(batch.results) + len(batch.failures))
            if stop:
                raise SqueezeNetError(stop)
    finally:
        bar.close()
        if writer:
            writer.close()
    if args.save_logits:
        rows = np.concatenate(logits) if logits else np.zeros((0, 0), np.float32)
        np.save(Path(args.save_logits), rows.astype(np.float32))
    seconds = time.perf_counter() - start
    if skipped or shown:
        resumed = f", {already} already in {args.output}" if already else ""
        print(
            f"squeezenet predict: {written} images in {seconds:.1f} s "
            f"({written / max(seconds, 1e-9):.1f} images/s){resumed}, "
            f"{skipped} unreadable skipped",
            file=sys.stderr,
        )
    return 1 if skipped else 0


def _print(results: list[dict], as_json: bool) -> None:
    for r in results:
        if as_json:
            print(json.dumps(r))
        else:
            print(r["file"])
            for t in r["top"]:
                print(f"  {t['prob']:7.2%}  {t['label']}  ({t['index']})")
    sys.stdout.flush()  # results as they come, also through a pipe


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_evaluate(args: argparse.Namespace) -> None:
    from ..inference.pipeline import evaluate

    model, forward = _model_and_forward(args)
    result = evaluate(
        model, args.data, forward=forward, batch_size=args.batch_size, workers=args.workers,
        progress=_progress(args),
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        skipped = f", {result['skipped']} unreadable skipped" if result["skipped"] else ""
        print(
            f"{args.data}: top-1 {result['top1']:.2%}  top-5 {result['top5']:.2%}  "
            f"({result['n']} images{skipped})"
        )
