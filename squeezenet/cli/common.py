"""Argument helpers shared by sub-commands: range-checked types, one-line parse errors, defaults
in ``--help``, and the default weights.

Nothing here imports torch or the other heavy modules at import time: every command's parser is
built for ``squeezenet --help``, so a parser may only name what its command imports when it runs
(``LazyChoices``, ``Deferred``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..errors import SqueezeNetError

MAX_BATCH = 1024  # images per forward pass: 1024 at 227 px is 630 MB of float32 input
MAX_WORKERS = 64  # decoding processes
MAX_THREADS = 256
MAX_IMAGE_SIZE = 2048  # input side; the first activations of v1.0 at 2048 px take 400 MB
MAX_CLASSES = 100_000
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
# cached downloads tried when --weights is not given, best first ('squeezenet download NAME')
DEFAULT_WEIGHTS = ["squeezenet1_1.torchvision", "squeezenet1_1.ncnn", "squeezenet1_0.torchvision"]


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help where X is not None or False and the help
    does not already say its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if isinstance(default, Deferred):
            default = default.get()
        if (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or "default" in text
            or (not action.option_strings and action.nargs not in ("?", "*"))
        ):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"

    def _metavar_formatter(self, action: argparse.Action, default_metavar):
        if default_metavar is None and isinstance(action.choices, LazyChoices):
            # add_argument's own check of the metavar (no default metavar): the choices are
            # read for --help and for a value given, not when the parser is built
            return lambda size: (action.dest.upper(),) * size
        return super()._metavar_formatter(action, default_metavar)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (exit 2), with defaults in ``--help``,
    and whose ``Deferred`` defaults are read once the arguments are parsed."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for name, value in vars(namespace).items():
            if isinstance(value, Deferred):
                setattr(namespace, name, value.get())
        return namespace, extras


class Deferred:
    """A default that lives in a module too slow to import for every parser: ``--help`` shows
    it and ``Parser`` reads it after parsing, both importing that module only then."""

    def __init__(self, get: Callable[[], object]) -> None:
        self.get = get

    def __str__(self) -> str:
        value = self.get()
        return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


class LazyChoices(Sequence):
    """``choices=`` read on first use (a given value checked, or ``--help``), not at parse setup."""

    def __init__(self, get: Callable[[], Sequence]) -> None:
        self._get, self._items = get, None

    def _load(self) -> list:
        if self._items is None:
            self._items = list(self._get())
        return self._items

    def __getitem__(self, index):
        return self._load()[index]

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, value) -> bool:
        return value in self._load()

    def __iter__(self) -> Iterator:
        return iter(self._load())


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``lo..hi`` (no upper limit when ``hi`` is None)."""
    expected = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.range = (lo, hi)  # read by the tests that walk the parsers
    return parse


def float_range(
    lo: float, hi: float | None = None, *, open_lo: bool = False, open_hi: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite number between ``lo`` and ``hi`` (ends excluded if open)."""
    left, right = "(" if open_lo else "[", ")" if open_hi else "]"
    expected = (
        f"a number {'>' if open_lo else '>='} {lo:g}"
        if hi is None
        else f"a number in {left}{lo:g}, {hi:g}{right}"
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        below = value <= lo if open_lo else value < lo
        above = hi is not None and (value >= hi if open_hi else value > hi)
        if not math.isfinite(value) or below or above:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.range = (lo, hi)
    return parse


def int_list(lo: int, hi: int | None = None) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated integers, each in ``lo..hi``."""
    one = int_range(lo, hi)

    def parse(text: str) -> list[int]:
        values = [one(v) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        return values

    parse.range = (lo, hi)
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
positive_float = float_range(0, open_lo=True)
non_negative_float = float_range(0)
fraction = float_range(0, 1)  # 0..1, both ends included
batch_size = int_range(1, MAX_BATCH)
workers = int_range(0, MAX_WORKERS)
threads = int_range(1, MAX_THREADS)
image_size = int_range(1, MAX_IMAGE_SIZE)  # each architecture's own minimum: check_image_size
num_classes = int_range(1, MAX_CLASSES)
seed = int_range(0, MAX_SEED)
port = int_range(1, 65535)


def existing_dir(text: str) -> str:
    """An argparse type: a folder that exists (the text, as given)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a folder")
    return text


def existing_file(text: str) -> str:
    """An argparse type: a file that exists (the text, as given)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a folder, not a file")
    return text


def output_file(text: str) -> str:
    """An argparse type: a file to write: not a folder, in a folder that exists."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a folder, not a file to write")
    return output_path(text)


def output_path(text: str) -> str:
    """An argparse type: a file or folder to write, in a folder that exists."""
    if not Path(text).parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: folder {Path(text).parent} does not exist")
    return text


def _formats() -> tuple[str, ...]:
    from ..weights.formats import FORMATS

    return FORMATS


def _backends() -> list[str]:
    from ..inference.backends import BACKENDS

    return BACKENDS


def _models() -> list[str]:
    from ..models import list_models

    return list_models()


BACKEND_CHOICES = LazyChoices(_backends)
FORMAT_CHOICES = LazyChoices(_formats)
ARCH_CHOICES = LazyChoices(_models)


def add_weights_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """--weights (default: pretrained weights found on this machine), --format, --prototxt,
    --preprocess."""
    parser.add_argument(
        "--weights", required=required, metavar="PATH_OR_NAME",
        help="weights file (any supported format) or a registered name (see 'squeezenet list')"
        + ("" if required else "; default: pretrained weights found on this machine, said on "
           "stderr"),
    )  # fmt: skip
    add_reading_args(parser, "weights")


def add_reading_args(parser: argparse.ArgumentParser, whose: str) -> None:
    """--format, --prototxt, --preprocess: how to read the weights (``whose`` format, in help)."""
    parser.add_argument("--format", choices=FORMAT_CHOICES, help=f"{whose} format, if not detected")
    parser.add_argument(
        "--prototxt", type=existing_file, metavar="FILE",
        help="Caffe prototxt giving layer shapes and padding",
    )  # fmt: skip
    parser.add_argument("--preprocess", choices=["caffe", "torchvision"], help="override preset")


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def weights_or_default(args: argparse.Namespace) -> str:
    """--weights, or the pretrained weights ``default_weights`` finds (said on stderr)."""
    if args.weights is None:
        args.weights = default_weights(args.command)
    return args.weights


def default_weights(command: str = "predict") -> str:
    """Pretrained weights found on this machine, said on stderr; else how to get some."""
    from ..data.datasets import shared_dir, squeezenet_home
    from ..weights.entries import ENTRIES

    shared = shared_dir() / "weights"
    candidates = [
        shared / "ncnn/squeezenet_v1.1.ncnn.param",
        shared / "deep-compression/compressed_SqueezeNet.net",
    ] + [squeezenet_home() / ENTRIES[name].filename for name in DEFAULT_WEIGHTS]
    for path in candidates:
        if path.is_file():
            print(f"squeezenet {command}: using {path} (choose with --weights)", file=sys.stderr)
            return str(path)
    raise SqueezeNetError(
        "no --weights given and no pretrained weights found in the shared data or "
        f"{squeezenet_home()}; run 'squeezenet download {DEFAULT_WEIGHTS[0]}' once"
    )


def model_from_args(args: argparse.Namespace):
    """The model of --weights (or the default weights) with --format, --prototxt, --preprocess."""
    from ..weights.load import load_model

    return load_model(
        weights_or_default(args),
        file_format=args.format,
        prototxt=args.prototxt,
        preprocess=args.preprocess,
    )


def check_image_size(arch: str, size: int | None) -> None:
    """A one-line error when ``size`` is below what ``arch`` can take (before any work)."""
    if size is None:
        return
    from ..models.stats import min_input_size

    smallest = min_input_size(arch)
    if size < smallest:
        raise SqueezeNetError(
            f"--image-size {size}: input of {size}x{size} is too small for {arch} "
            f"(at least {smallest})"
        )
