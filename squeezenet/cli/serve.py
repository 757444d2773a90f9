"""``squeezenet serve``: the HTTP service and web page for one model."""

from __future__ import annotations

import argparse

from ..errors import SqueezeNetError
from .common import (
    BACKEND_CHOICES,
    add_weights_args,
    batch_size,
    float_range,
    model_from_args,
    port,
    positive_float,
    threads,
    weights_or_default,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="HTTP service and web page that classify images")
    add_weights_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=port, default=8000, help="TCP port to listen on")
    p.add_argument(
        "--backend", choices=BACKEND_CHOICES, default="auto", help="see docs/inference.md"
    )
    p.add_argument(
        "--max-batch", type=batch_size, default=32, help="images per forward pass at most"
    )
    p.add_argument(
        "--max-wait-ms", type=float_range(0, 60_000), default=5.0,
        help="how long a batch waits for more requests once it has one",
    )  # fmt: skip
    p.add_argument("--max-body-mb", type=positive_float, default=20.0, help="largest request body")
    p.add_argument(
        "--max-pixels", type=float_range(0, 179, open_lo=True), default=25.0, metavar="MEGAPIXELS",
        help="largest decoded image, width x height in millions (Pillow refuses over 179)",
    )  # fmt: skip
    p.add_argument(
        "--timeout", type=positive_float, default=30.0, help="seconds per request at most"
    )
    p.add_argument("--threads", type=threads, help="threads of the network (default: one per core)")
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="uvicorn's log level",
    )  # fmt: skip
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
    import torch

    from ..inference.backends import open_file

    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 1e6),
        max_pixels=int(args.max_pixels * 1e6),
        timeout_s=args.timeout,
    )
    if args.threads:
        torch.set_num_threads(args.threads)  # the backends take torch's thread count
    weights = weights_or_default(args)
    model = open_file(weights, args.backend, args.preprocess) or model_from_args(args)
    app = create_app(
        model, backend=args.backend, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, limits=limits,
    )  # fmt: skip
    print(f"squeezenet serve: http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
