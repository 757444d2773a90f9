"""Reading an image out of a request: the body within its size limit, multipart or raw."""

from __future__ import annotations

import io

import torch
from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..data.transforms import Preprocess, load_image


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
