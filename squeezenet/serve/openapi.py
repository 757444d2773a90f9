"""The OpenAPI description: FastAPI generates it from the routes and response models; this
adds what it cannot see, because classify reads its query and body itself (for speed and to
stream the body within its limit): the ``topk`` parameter and the accepted image bodies."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

_IMAGE = {"schema": {"type": "string", "format": "binary"}}
IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "image/*": _IMAGE,
        "application/octet-stream": _IMAGE,
    },
}


def topk_parameter(topk: TypeAdapter) -> dict:
    """The query parameter as FastAPI would describe it, from the validator classify uses."""
    schema = {**topk.json_schema(), "default": 5, "title": "Topk"}
    return {"name": "topk", "in": "query", "required": False, "schema": schema}


def describe(app: FastAPI, topk: TypeAdapter) -> None:
    """Make ``app.openapi()`` the generated schema plus classify's parameter and body."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            classify = schema["paths"]["/v1/classify"]["post"]
            classify["parameters"] = [topk_parameter(topk)]
            classify["requestBody"] = IMAGE_BODY
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
