"""HTTP serving: a FastAPI app with dynamic micro-batching and a web page (``squeezenet serve``)."""

from .app import create_app

__all__ = ["create_app"]
