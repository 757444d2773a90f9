"""The HTTP service: ``create_app(model)`` returns a FastAPI app serving one loaded model.

* ``POST /v1/classify``: a multipart file or a raw image body, ``?topk=``; answers the object
  ``squeezenet predict --json`` prints, plus the batch size and timings.
* ``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /`` (the page),
  and FastAPI's own ``/openapi.json`` and ``/docs``.

Images are decoded in a thread pool (Pillow releases the GIL) and classified together by the
``MicroBatcher``. Every rejection is a 4xx JSON ``{"detail": message}``.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from torch import nn

from .. import __version__
from ..data.transforms import Preprocess, load_image
from ..errors import SqueezeNetError
from ..inference.backends import optimize
from ..inference.pipeline import top_classes
from .batcher import MicroBatcher
from .metrics import Metrics

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Limits:
    """What one request may cost; anything beyond is refused with a 4xx."""

    max_body_bytes: int = 20_000_000
    max_pixels: int = 25_000_000  # decoded width x height (decompression bombs)
    timeout_s: float = 30.0  # from the first byte read to the answer


class TopClass(BaseModel):
    index: int
    label: str
    prob: float


class Timing(BaseModel):
    decode_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float


class Classification(BaseModel):
    file: str
    top: list[TopClass]
    batch_size: int
    timing: Timing


class Upload(io.BytesIO):
    """Uploaded bytes that print as their file name in ``load_image``'s messages."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return repr(self.name)


def decode(data: bytes, name: str, preprocess: Preprocess, max_pixels: int) -> torch.Tensor:
    """Bytes -> uint8 HWC pixels, as ``predict`` prepares a file (``normalize`` comes per batch)."""
    image = load_image(Upload(data, name), draft_size=preprocess.resize, max_pixels=max_pixels)
    return preprocess.pixels(image)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (or its declared length) passes limit."""
    too_large = HTTPException(413, f"request body larger than the {limit:,}-byte limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_image(request: Request, limit: int) -> tuple[bytes, str]:
    """(image bytes, file name) from a multipart upload or a raw image body."""
    body = await read_body(request, limit)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":

        async def stream():
            yield body

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=1).parse()
        except MultiPartException as e:
            raise HTTPException(400, f"malformed multipart body: {e.message}") from None
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not files:
            raise HTTPException(400, "the multipart body has no file part (send it as 'file')")
        data, name = await files[0].read(), files[0].filename or "upload"
        await form.close()
    elif media in ("", "application/octet-stream") or media.startswith("image/"):
        data, name = body, "upload"
    else:
        raise HTTPException(
            415, f"unsupported content type {media!r}: send multipart/form-data or an image/* body"
        )
    if not data:
        raise HTTPException(400, "empty image: the request carries no bytes to classify")
    return data, name


class RequestMetrics:
    """ASGI middleware counting every HTTP answer by route and status, timing classify."""

    def __init__(self, app, metrics: Metrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.requests[route, status] += 1
            if route == "/v1/classify":
                self.metrics.latency.observe(time.perf_counter() - start)


def create_app(
    model: nn.Module,
    *,
    backend: str = "auto",
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    limits: Limits = Limits(),
) -> FastAPI:
    """A FastAPI app classifying images with ``model`` (from ``squeezenet.load_model``)."""
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
        version=__version__,
        summary="ImageNet classification with SqueezeNet, micro-batched.",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(
            f"{' '.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )  # fmt: skip
        return JSONResponse({"detail": message}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, 500)

    image_body = {"schema": {"type": "string", "format": "binary"}}
    # topk is validated by hand (the same pydantic validator, messages and 422) rather than as a
    # FastAPI Query parameter: solving that dependency cost more than all of classify's own code.
    topk_type = TypeAdapter(Annotated[int, Field(ge=1, le=info.num_classes)])
    topk_schema = {**topk_type.json_schema(), "default": 5, "title": "Topk"}

    def parse_topk(request: Request) -> int:
        raw = request.query_params.get("topk")
        try:
            return 5 if raw is None else topk_type.validate_python(raw)
        except ValidationError as e:
            raise RequestValidationError(
                [{**error, "loc": ("query", "topk")} for error in e.errors()]
            ) from None

    @app.post(
        "/v1/classify",
        response_model=Classification,
        summary="Top-k ImageNet classes of one image",
        responses={
            code: {"description": why}
            for code, why in [
                (400, "malformed multipart body or no image"),
                (408, "not answered within the per-request timeout"),
                (413, "body larger than the limit"),
                (415, "unsupported content type"),
                (422, "undecodable image, too many pixels, or bad topk"),
            ]
        },
        openapi_extra={
            "parameters": [
                {"name": "topk", "in": "query", "required": False, "schema": topk_schema}
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "required": ["file"],
                        }
                    },
                    "image/*": image_body,
                    "application/octet-stream": image_body,
                },
            },
        },
    )
    async def classify(request: Request) -> JSONResponse:
        start, topk = time.perf_counter(), parse_topk(request)
        try:
            async with asyncio.timeout(limits.timeout_s):
                with batcher.expecting():
                    data, name = await read_image(request, limits.max_body_bytes)
                    decoding = batcher.submit(  # decoded in a thread, queued from there
                        request.app.state.decoder,
                        decode, data, name, info.preprocess, limits.max_pixels,
                    )  # fmt: skip
                result = await decoding
        except TimeoutError:
            raise HTTPException(
                408, f"not classified within the {limits.timeout_s:g} s limit; server busy"
            ) from None
        except SqueezeNetError as e:
            raise HTTPException(422, str(e)) from None
        timing = {
            "decode_ms": (result.queued - start) * 1e3,
            "queue_ms": result.queue_ms,
            "inference_ms": result.inference_ms,
            "total_ms": (time.perf_counter() - start) * 1e3,
        }
        try:
            top = top_classes(result.logits, info, topk)
        except SqueezeNetError as e:  # the model's fault, not the request's
            raise HTTPException(500, str(e)) from None
        # A plain dict as a Response: FastAPI skips validating it against the response model,
        # which documents the answer in the OpenAPI schema only.
        return JSONResponse(
            {"file": name, "top": top, "batch_size": result.batch_size, "timing": timing}
        )

    @app.get("/v1/models", summary="The loaded weights, their metadata and preprocessing")
    async def models() -> dict:
        model_id = info.entry or Path(info.source).name
        serving = {"backend": backend, "max_batch": max_batch, "max_wait_ms": max_wait_ms}
        return {"models": [{"id": model_id, **info.to_meta(), "serving": serving,
                            "limits": asdict(limits)}]}  # fmt: skip

    @app.get("/healthz", summary="200 while the inference loop runs")
    async def healthz() -> JSONResponse:
        if batcher.alive:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "inference loop stopped"}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    routes = {route.path for route in app.routes}
    app.add_middleware(RequestMetrics, metrics=metrics, routes=routes)
    return app
