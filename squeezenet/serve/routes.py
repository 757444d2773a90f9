"""The HTTP routes. Each reads what it serves from ``request.app.state.service``.

* ``POST /v1/classify``: a multipart file or a raw image body, ``?topk=``; answers the object
  ``squeezenet predict --json`` prints, plus the batch size and timings.
* ``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /`` (the page).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import SqueezeNetError
from ..inference.pipeline import top_classes
from ..weights.info import WeightsInfo
from .batcher import MicroBatcher
from .metrics import Metrics
from .uploads import decode, read_image

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Limits:
    """What one request may cost; anything beyond is refused with a 4xx."""

    max_body_bytes: int = 20_000_000
    max_pixels: int = 25_000_000  # decoded width x height (decompression bombs)
    timeout_s: float = 30.0  # from the first byte read to the answer


@dataclass
class Service:
    """What the routes serve: the model's metadata, its batcher, the counters, the limits."""

    info: WeightsInfo
    batcher: MicroBatcher
    metrics: Metrics
    limits: Limits
    serving: dict  # backend, max_batch, max_wait_ms, as /v1/models reports them
    topk: TypeAdapter  # an int in 1..num_classes


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


CLASSIFY_ERRORS = {
    400: "malformed multipart body or no image",
    408: "not answered within the per-request timeout",
    413: "body larger than the limit",
    415: "unsupported content type",
    422: "undecodable image, too many pixels, or bad topk",
}


def parse_topk(request: Request, topk: TypeAdapter) -> int:
    """``?topk=`` (default 5), checked as FastAPI would check a Query parameter, same 422.

    By hand rather than as a FastAPI parameter: solving that dependency cost more than all of
    classify's own code.
    """
    raw = request.query_params.get("topk")
    try:
        return 5 if raw is None else topk.validate_python(raw)
    except ValidationError as e:
        raise RequestValidationError(
            [{**error, "loc": ("query", "topk")} for error in e.errors()]
        ) from None


async def classify(request: Request) -> JSONResponse:
    service: Service = request.app.state.service
    info, limits = service.info, service.limits
    start, topk = time.perf_counter(), parse_topk(request, service.topk)
    try:
        async with asyncio.timeout(limits.timeout_s):
            with service.batcher.expecting():
                data, name = await read_image(request, limits.max_body_bytes)
                decoding = service.batcher.submit(  # decoded in a thread, queued from there
                    request.app.state.decoder,
                    decode,
                    data,
                    name,
                    info.preprocess,
                    limits.max_pixels,
                )
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


async def models(request: Request) -> dict:
    service: Service = request.app.state.service
    info = service.info
    model = {"id": info.entry or Path(info.source).name, **info.to_meta()}
    return {"models": [{**model, "serving": service.serving, "limits": asdict(service.limits)}]}


async def healthz(request: Request) -> JSONResponse:
    if request.app.state.service.batcher.alive:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "inference loop stopped"}, status_code=503)


async def prometheus(request: Request) -> PlainTextResponse:
    text = request.app.state.service.metrics.render()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


def add_routes(app: FastAPI) -> None:
    """Route the app's paths to the handlers above (the OpenAPI summaries are set here)."""
    app.add_api_route(
        "/v1/classify",
        classify,
        methods=["POST"],
        response_model=Classification,
        summary="Top-k ImageNet classes of one image",
        responses={code: {"description": why} for code, why in CLASSIFY_ERRORS.items()},
    )
    app.add_api_route(
        "/v1/models", models, summary="The loaded weights, their metadata and preprocessing"
    )
    app.add_api_route("/healthz", healthz, summary="200 while the inference loop runs")
    app.add_api_route(
        "/metrics", prometheus, response_class=PlainTextResponse, summary="Prometheus metrics"
    )
    app.add_api_route("/", page, include_in_schema=False)
