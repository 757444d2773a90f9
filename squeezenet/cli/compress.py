"""``squeezenet compress``: Deep Compression of a model into a ``.sqz`` file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import SqueezeNetError
from .common import (
    Deferred,
    LazyChoices,
    add_progress_arg,
    batch_size,
    existing_dir,
    float_range,
    int_list,
    non_negative_float,
    output_file,
    positive_float,
    positive_int,
    seed,
    weights_or_default,
)


class _Defaults:
    """``Options()``'s fields as ``Deferred`` defaults: compress.pipeline imports torch."""

    def __getattr__(self, name: str) -> Deferred:
        return Deferred(lambda: getattr(_options(), name))


def _options():
    from ..compress.pipeline import Options

    return Options()


def _methods() -> tuple[str, ...]:
    from ..compress.pipeline import METHODS

    return METHODS


def _float_dtypes() -> list[str]:
    from ..weights.formats.sqz import FLOAT_DTYPES

    return sorted(FLOAT_DTYPES)


def _gap_bits() -> range:
    from ..weights.formats.sqz import MAX_GAP_BITS

    return range(MAX_GAP_BITS + 1)


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = _Defaults()
    p = subparsers.add_parser(
        "compress", help="prune, quantize, fine-tune and Huffman-code weights into a .sqz file"
    )
    p.add_argument(
        "--weights", metavar="PATH_OR_NAME",
        help="model to compress (default: pretrained weights found on this machine, said on "
        "stderr)",
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, metavar="OUT.sqz", type=output_file)
    _add_budget_args(p, defaults)
    p.add_argument(
        "--sparsity",
        default=defaults.sparsity,
        metavar="auto|PROFILE",
        help="auto: keep the zeros of a pruned model, else 'released'; keep; "
        "released (Song Han's per-layer densities); a density for every layer; or "
        "PATTERN=DENSITY,... over layer roles, e.g. '*.expand3x3=0.4,conv10=0.3'",
    )
    p.add_argument(
        "--method",
        choices=LazyChoices(_methods),
        default=defaults.method,
        help="obs: prune and share each layer against its real inputs (needs --data); "
        "magnitude: Han et al.'s magnitude pruning and k-means (auto: obs with --data)",
    )
    p.add_argument(
        "--calibration",
        type=positive_int,
        default=defaults.calibration,
        metavar="N",
        help="images whose layer inputs obs uses",
    )
    p.add_argument(
        "--data",
        type=existing_dir,
        metavar="DIR",
        help="images to fine-tune on by distillation (labels used where the folder has them)",
    )
    p.add_argument(
        "--eval",
        type=existing_dir,
        metavar="DIR",
        help="labelled folder: top-1/top-5 before and after, and the size/accuracy plot",
    )
    p.add_argument(
        "--teacher", metavar="PATH_OR_NAME", help="distillation teacher (default: --weights)"
    )
    _add_finetune_args(p, defaults)
    p.add_argument(
        "--float",
        dest="dtype",
        choices=LazyChoices(_float_dtypes),
        default=defaults.dtype,
        help="storage of codebooks and biases",
    )
    p.add_argument(
        "--gap-bits",
        type=int,
        choices=LazyChoices(_gap_bits),
        help="width of the relative positions (default: the smallest per layer)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse OUT.pruned.safetensors written by an earlier run",
    )
    p.add_argument(
        "--plot", type=output_file, metavar="PNG", help="size/accuracy plot (default: OUT.png)"
    )
    p.add_argument("--seed", type=seed, default=defaults.seed, help="seed of sampling and k-means")
    p.add_argument("--device", default=defaults.device, help="torch device, e.g. cuda")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_progress_arg(p)
    p.set_defaults(run=run_compress)


def _add_budget_args(p: argparse.ArgumentParser, defaults: _Defaults) -> None:
    """Bit widths, and the budget searches (--target-bytes, --max-drop)."""
    p.add_argument(
        "--bits",
        type=int_list(1, 8),
        metavar="B[,B...]",
        help="bits per weight code (1-8); several give OUT-<B>bit.sqz each (default 6); with "
        "--target-bytes or --max-drop, the widths a layer may get (default 2-8)",
    )
    p.add_argument(
        "--target-bytes",
        type=positive_int,
        metavar="N",
        help="the most accurate file of at most N bytes: bits and density per layer from "
        "measured sensitivities, decided on a held-out split of --data",
    )
    p.add_argument(
        "--max-drop",
        type=float_range(0, 100),
        metavar="P",
        help="the smallest file whose top-1 and top-5 on a held-out split of --data are within "
        "P points of the original's",
    )
    p.add_argument(
        "--holdout",
        type=positive_int,
        default=defaults.holdout,
        metavar="N",
        help="images of --data held out for the search's decisions, never calibrated on",
    )
    p.add_argument(
        "--search-steps",
        type=positive_int,
        default=defaults.search_steps,
        metavar="N",
        help="files compressed and evaluated by --max-drop's bisection",
    )


def _add_finetune_args(p: argparse.ArgumentParser, defaults: _Defaults) -> None:
    """The fine-tuning by distillation after pruning and quantizing."""
    p.add_argument(
        "--images", type=positive_int, default=defaults.images,
        help="fine-tuning images held in memory",
    )  # fmt: skip
    p.add_argument(
        "--prune-steps", type=positive_int, default=defaults.prune_steps,
        help="pruning in this many steps, fine-tuning after each",
    )  # fmt: skip
    p.add_argument(
        "--prune-epochs",
        type=non_negative_float,
        default=defaults.prune_epochs,
        help="passes over the images after each pruning step",
    )
    p.add_argument(
        "--prune-lr", type=positive_float, default=defaults.prune_lr,
        help="learning rate of the fine-tuning between pruning steps",
    )  # fmt: skip
    p.add_argument(
        "--epochs",
        type=non_negative_float,
        default=defaults.epochs,
        help="passes over the images to fine-tune the centroids (default: 0 after obs, 2 after "
        "magnitude); in a budget search, of each candidate before it is measured",
    )
    p.add_argument("--lr", type=positive_float, default=defaults.lr, help="centroid learning rate")
    p.add_argument(
        "--temperature", type=positive_float, default=defaults.temperature,
        help="distillation temperature",
    )  # fmt: skip
    p.add_argument(
        "--label-weight", type=float_range(0, 1), default=defaults.label_weight,
        help="share of the loss from the labels, the rest from the teacher",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", type=batch_size, default=defaults.batch_size, help="fine-tuning batch"
    )


def run_compress(args: argparse.Namespace) -> None:
    if Path(args.output).suffix.lower() != ".sqz":
        raise SqueezeNetError(
            f"{args.output}: compress writes .sqz files; name the output OUT.sqz "
            "('squeezenet convert' writes the other weights formats)"
        )
    from ..compress.pipeline import Options, compress
    from ..compress.report import layer_table, plot, search_table, summary_table, to_json

    weights_or_default(args)
    searching = args.target_bytes is not None or args.max_drop is not None
    bits = tuple(args.bits) if args.bits else (Options.search_bits if searching else Options.bits)
    options = Options(
        bits=bits if not searching else Options.bits, sparsity=args.sparsity, method=args.method,
        calibration=args.calibration, data=_path(args.data), eval_data=_path(args.eval),
        teacher=args.teacher, images=args.images, prune_steps=args.prune_steps,
        prune_epochs=args.prune_epochs, prune_lr=args.prune_lr, epochs=args.epochs, lr=args.lr,
        temperature=args.temperature, label_weight=args.label_weight,
        batch_size=args.batch_size, dtype=args.dtype, gap_bits=args.gap_bits,
        resume=args.resume, seed=args.seed, device=args.device,
        progress=not (args.json or args.no_progress),
        target_bytes=args.target_bytes, max_drop=args.max_drop, holdout=args.holdout,
        search_bits=bits if searching else Options.search_bits, search_steps=args.search_steps,
    )  # fmt: skip
    report = compress(args.weights, args.output, options)
    plot_path = Path(args.plot) if args.plot else Path(args.output).with_suffix(".png")
    plotted = args.eval or report.search is not None
    if plotted:
        plot(report, plot_path)
    if args.json:
        print(json.dumps(to_json(report)))
        return
    for result in report.results:
        print(f"{result.path}:\n{layer_table(result)}\n")
    if report.search is not None:
        print(f"{search_table(report.search)}\n")
    print(summary_table(report))
    print(f"{report.seconds / 60:.1f} min" + (f"; plot: {plot_path}" if plotted else ""))


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text)
