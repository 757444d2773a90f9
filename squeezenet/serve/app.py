"""The HTTP service: ``create_app(model)`` returns a FastAPI app serving one loaded model.

The pieces: ``routes`` (classify, models, health, metrics, the page), ``errors`` (every
rejection is a JSON ``{"detail": message}``), ``openapi`` (FastAPI's generated description
plus what classify reads by hand), ``uploads`` (the image out of a request), ``batcher``,
``metrics`` and ``web`` (the files of the page's in-browser mode, under ``/web/``). Images are
decoded in a thread pool (Pillow releases the GIL) and classified together by the
``MicroBatcher``; FastAPI serves ``/openapi.json`` and ``/docs``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Annotated

import torch
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic import Field, TypeAdapter
from torch import nn

from ..errors import SqueezeNetError
from ..inference.backends import optimize
from .batcher import MicroBatcher
from .errors import add_error_handlers
from .metrics import Metrics, RequestMetrics
from .openapi import describe
from .routes import STATIC, Classification, Limits, Service, add_routes
from .web import WebModel, web_file

__all__ = ["Classification", "Limits", "create_app"]


def create_app(
    model: nn.Module,
    *,
    backend: str = "auto",
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    limits: Limits | None = None,
) -> FastAPI:
    """A FastAPI app classifying images with ``model`` (from ``squeezenet.load_model``).

    ``limits`` None means ``Limits()``: 20 MB bodies, 25 megapixels, 30 s per request.
    """
    limits = limits or Limits()
    if max_batch < 1 or max_wait_ms < 0:
        raise SqueezeNetError("--max-batch must be at least 1 and --max-wait-ms at least 0")
    info = model.weights_info
    forward = optimize(model, backend)
    metrics = Metrics()

    def infer(pixels: torch.Tensor) -> torch.Tensor:
        """A stacked uint8 batch -> logits: normalised in one pass, then the network."""
        return forward(info.preprocess.normalize(pixels))

    batcher = MicroBatcher(infer, max_batch, max_wait_ms, on_batch=metrics.on_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.decoder = ThreadPoolExecutor(os.cpu_count(), thread_name_prefix="decode")
        batcher.start()
        yield
        await batcher.stop()
        app.state.decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="squeezenet",
        version=version("squeezenet"),
        summary="ImageNet classification with SqueezeNet, micro-batched.",
        lifespan=lifespan,
    )
    topk = TypeAdapter(Annotated[int, Field(ge=1, le=info.num_classes)])
    serving = {"backend": backend, "max_batch": max_batch, "max_wait_ms": max_wait_ms}
    app.state.service = Service(info, batcher, metrics, limits, serving, topk)
    add_error_handlers(app)
    add_routes(app)
    app.state.web_model = WebModel(model)  # the page's in-browser mode, under /web/
    app.add_api_route("/web/{name}", web_file, include_in_schema=False)
    describe(app, topk)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    routes = {route.path for route in app.routes}
    app.add_middleware(RequestMetrics, metrics=metrics, routes=routes)
    return app
