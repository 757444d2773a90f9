"""The ``squeezenet`` command: a thin layer that parses arguments and calls the API.

Each module in this package adds its sub-commands through ``register(subparsers)``; a user
error (``SqueezeNetError``, or a bad argument) is printed as one line with exit 2, never a
traceback. Building the parsers imports no heavy module (torch, onnx, matplotlib...): each
command imports what it needs when it runs, so ``squeezenet --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import SqueezeNetError
from .common import Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="squeezenet", description="SqueezeNet models, weights and jobs.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_") and info.name != "common":
            importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (2 for a bad argument or a user error, 0 after --help)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # the parser's one-line error or --help: a code, as for a command
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.run(args) or 0)
    except SqueezeNetError as e:
        print(f"squeezenet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"squeezenet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
