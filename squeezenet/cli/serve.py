"""``squeezenet serve``: the HTTP service and web page for one model."""

from __future__ import annotations

import argparse

import torch

from ..errors import SqueezeNetError
from ..inference.backends import BACKENDS, open_file
from .common import add_weights_args, model_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="HTTP service and web page that classify images")
    add_weights_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--max-batch", type=int, default=32, help="images per forward pass at most")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0,
        help="how long a batch waits for more requests once it has one",
    )  # fmt: skip
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body")
    p.add_argument(
        "--max-pixels", type=float, default=25.0, metavar="MEGAPIXELS",
        help="largest decoded image, width x height in millions",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request at most")
    p.add_argument("--threads", type=int, help="threads of the network (default: one per core)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from ..serve.app import Limits, create_app
    except ImportError as e:
        raise SqueezeNetError(
            f"serving needs the 'serve' extra ({e.name} is missing): "
            "pip install 'squeezenet[serve]'"
        ) from None
    if min(args.max_body_mb, args.max_pixels, args.timeout) <= 0:
        raise SqueezeNetError("--max-body-mb, --max-pixels and --timeout must be positive")
    if args.threads is not None and args.threads < 1:
        raise SqueezeNetError("--threads must be at least 1")
    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 1e6),
        max_pixels=int(args.max_pixels * 1e6),
        timeout_s=args.timeout,
    )
    if args.threads:
        torch.set_num_threads(args.threads)  # the backends take torch's thread count
    model = open_file(args.weights, args.backend, args.preprocess) or model_from_args(args)
    app = create_app(
        model, backend=args.backend, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, limits=limits,
    )  # fmt: skip
    print(f"squeezenet serve: http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
