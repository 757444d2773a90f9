"""How the service answers what goes wrong: always JSON ``{"detail": message}``.

``HTTPException`` (4xx from the routes, 500 for a model that gives NaN) keeps FastAPI's own
handler; these two cover invalid parameters and anything unexpected.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with every problem on one line: ``query topk: Input should be ...``."""
    message = "; ".join(f"{' '.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"detail": message}, status_code=422)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """500 naming the kind of failure, never a traceback."""
    return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, 500)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, internal_error)
