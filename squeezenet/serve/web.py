"""The page's "in this browser" mode: what it needs to run the model itself, under ``/web/``.

The same files as ``squeezenet export --format web`` writes: the page's ``squeezenet.js``,
onnxruntime-web's WASM build (from ``node_modules``), ``model.onnx`` and ``model.json``. The
graph is the served file itself for an .onnx model (int8 included), else the module exported
to ONNX on the first request; the photo then never leaves the browser. The page's stylesheet
and top-5 bars (``web.SHARED_FILES``) come from here in either mode: the exported page and this
one draw with the same files.
"""

from __future__ import annotations

import threading

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from torch import nn

from ..errors import SqueezeNetError
from ..inference.export import web
from ..inference.export.onnx import onnx_model, read_onnx
from ..weights.formats.onnx import metadata

MEDIA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".css": "text/css",
}


class WebModel:
    """The served model as the page's ``model.onnx`` and ``model.json``, made once."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._graph: bytes | None = None
        self._lock = threading.Lock()

    def graph(self) -> bytes:
        with self._lock:  # two first requests at once export once
            if self._graph is None:
                path = getattr(self.model, "path", None)  # an OnnxModel: its file as it is
                if path is not None:
                    self._graph = path.read_bytes()
                else:
                    self._graph = onnx_model(self.model, dynamic_batch=False).SerializeToString()
            return self._graph

    def info(self) -> dict:
        quantization = None
        if getattr(self.model, "int8", False):  # an int8 OnnxModel: the note its file carries
            quantization = metadata(read_onnx(self.model.path)).get("quantization", "int8")
        return web.model_json(self.model.weights_info, quantization)


async def web_file(request: Request, name: str) -> Response:
    """``GET /web/{name}``: one of the files the page's in-browser mode loads."""
    served: WebModel = request.app.state.web_model
    if name == web.INFO:
        return JSONResponse(served.info())
    if name == web.MODEL:
        graph = await run_in_threadpool(served.graph)
        return Response(graph, media_type="application/octet-stream")
    if name in web.SHARED_FILES:
        path = web.PAGE / name
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])
    if name not in web.RUNTIME:
        raise HTTPException(404, f"/web/{name}: no such file")
    try:
        path = web.runtime_files()[name]
    except SqueezeNetError as e:  # the server's installation, reported to the page
        raise HTTPException(404, str(e)) from None
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])
