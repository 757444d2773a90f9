"""Fuzzing POST /v1/classify: random and damaged bodies, wrong content types, odd multipart,
lying or huge declared sizes, stalled uploads and decompression bombs.

Every answer must be a 200 or a 4xx JSON ``{"detail": message}`` in bounded time and memory,
and the server must go on answering afterwards: never a 5xx, a hang or a dead worker.
"""

from __future__ import annotations

import functools
import socket

import httpx
import pytest
from conftest import shared_path
from fastapi.testclient import TestClient
from fuzz import FUZZ, OUTCOMES, bounded, damages, png, report, sweep
from hypothesis import given, settings
from hypothesis import strategies as st
from live_server import serving

import squeezenet
from squeezenet.serve.app import Limits, create_app

LIMITS = Limits(max_body_bytes=1_000_000, max_pixels=25_000_000, timeout_s=2.0)
CONTENT_TYPES = [
    None, "image/png", "image/jpeg", "image/*", "application/octet-stream", "text/plain",
    "application/json", "multipart/form-data", "multipart/form-data; boundary=xyz",
    "application/x-www-form-urlencoded", "image/png; charset=utf-8",
]  # fmt: skip


PART_HEADS = [
    b'Content-Disposition: form-data; name="file"; filename="a.png"',
    b'Content-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png',
    b'Content-Disposition: form-data; name="file"',
    b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%F0%9F%90%88.png",
    b"Content-Disposition: attachment",
]
PNG_HEAD = png(64, 64)[8:60]  # an IHDR and part of the image data


@functools.cache
def model():
    return squeezenet.load_model(shared_path("weights/ncnn/squeezenet_v1.1.ncnn.param"))


def app():
    return create_app(model(), backend="eager", max_batch=8, max_wait_ms=2, limits=LIMITS)


@pytest.fixture(scope="module")
def client():
    with TestClient(app(), raise_server_exceptions=False) as c:
        yield c
        assert c.get("/healthz").json() == {"status": "ok"}
        photo = shared_path("data/photos/chelsea.png").read_bytes()
        assert c.post("/v1/classify", content=photo).status_code == 200  # still working
        assert 'status="5' not in c.get("/metrics").text  # no 5xx, ever
    report()


@functools.cache
def photo(name: str) -> bytes:
    return shared_path(f"data/photos/{name}").read_bytes()


def answer_is_clean(kind: str, reply: httpx.Response) -> None:
    """A 200 with classes, or a 4xx with a JSON message; counted for the notes."""
    OUTCOMES["POST /v1/classify", kind, str(reply.status_code)] += 1
    assert reply.status_code == 200 or 400 <= reply.status_code < 500, reply.text
    body = reply.json()
    if reply.status_code == 200:
        assert len(body["top"]) >= 1
    else:
        assert isinstance(body["detail"], str) and body["detail"], body


def post(client: TestClient, kind: str, **kwargs) -> None:
    with bounded():
        reply = client.post("/v1/classify", **kwargs)
    answer_is_clean(kind, reply)


@FUZZ
@given(
    body=st.binary(max_size=2048),
    # Any text as UTF-8 bytes (httpx refuses non-ASCII str headers), so every example is sent.
    content_type=st.sampled_from(CONTENT_TYPES) | st.text(max_size=40).map(str.encode),
    topk=st.none() | st.integers(-5, 2000).map(str) | st.text(max_size=8),
)
def test_random_bodies_types_and_topk(client, body, content_type, topk):
    headers = {"content-type": content_type} if content_type is not None else {}
    params = {"topk": topk} if topk is not None else {}
    post(client, "random body/type/topk", content=body, headers=headers, params=params)


@settings(FUZZ, max_examples=150)
@given(data=st.data(), name=st.sampled_from(["chelsea.png", "cat.jpg"]))
def test_damaged_photos_as_body_and_as_file(client, data, name):
    seed = photo(name)
    damage = data.draw(damages(len(seed), head=1024), label="damage")
    damaged = damage.apply(seed)
    if data.draw(st.booleans(), label="multipart"):
        filename = data.draw(st.text(max_size=30), label="filename")
        post(client, f"damaged photo ({damage.kind})", files={"file": (filename, damaged)})
    else:
        post(client, f"damaged photo ({damage.kind})", content=damaged)


@FUZZ
@given(
    boundary=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
    parts=st.lists(
        st.tuples(
            st.sampled_from(PART_HEADS) | st.binary(max_size=200),
            st.sampled_from([b"", b"\x89PNG\r\n\x1a\n"]).map(lambda b: b + PNG_HEAD)
            | st.binary(max_size=300),
        ),
        max_size=3,
    ),
    epilogue=st.sampled_from([b"--"]) | st.binary(max_size=50),
)
def test_handmade_multipart(client, boundary, parts, epilogue):
    """Multipart bodies with random part headers and contents, possibly unterminated."""
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\r\n" + head + b"\r\n\r\n" + content + b"\r\n"
                    for head, content in parts) + b"--" + b + epilogue  # fmt: skip
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    post(client, "handmade multipart", content=body, headers=headers)


@pytest.mark.parametrize("name", ["chelsea.png", "cat.jpg"])
def test_truncated_and_bitflipped_photo_sweeps(client, name):
    seed = photo(name)
    for damage in sweep(len(seed), count=32):
        post(client, f"{damage.kind}-sweep photo", content=damage.apply(seed))


def test_limits_and_bombs(client):
    cases = [
        ("body over the limit", {"content": b"\0" * 1_000_001}, 413),
        ("multipart over the limit", {"files": {"file": ("x.png", b"\0" * 1_000_001)}}, 413),
        ("bomb 100 Mpixel PNG", {"content": png(10_000, 10_000)}, 422),
        ("bomb 30 Mpixel PNG", {"content": png(6_000, 5_000)}, 422),
        ("many files", {"files": [("file", ("a", b"1")), ("file", ("b", b"2"))]}, 400),
    ]
    for kind, kwargs, status in cases:
        with bounded():
            reply = client.post("/v1/classify", **kwargs)
        answer_is_clean(kind, reply)
        assert reply.status_code == status, (kind, reply.text)


def raw_exchange(url: str, request: bytes) -> bytes:
    """Send raw bytes over a socket; return the server's whole answer (head and body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(request)
        except OSError:  # the server may answer and close before taking a refused body
            pass
        answer = b""
        while not complete(answer) and (chunk := sock.recv(65536)):
            answer += chunk
    return answer


def complete(answer: bytes) -> bool:
    head, found, body = answer.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.lower().split(b"\r\n")
               if line.startswith(b"content-length:")]  # fmt: skip
    return bool(found and lengths) and len(body) >= int(lengths[0])


def test_lying_sizes_stalls_and_bad_framing_on_a_real_socket():
    photo_bytes = photo("cat.jpg")
    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
    cases = [
        # a declared size far over the limit: refused before the body is read
        ("declared 1 TB", head + b"Content-Length: 1000000000000\r\n\r\n" + photo_bytes, 413),
        # fewer bytes than declared, then silence: the per-request timeout answers
        ("short body, stalled", head + b"Content-Length: 200000\r\n\r\n" + photo_bytes, 408),
        # headers only, body never sent
        ("headers only, stalled", head + b"Content-Length: 10\r\n\r\n", 408),
        # chunked upload growing past the limit
        (
            "chunked over the limit",
            head
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"F4240\r\n" + b"\0" * 1_000_000 + b"\r\n" for _ in range(2)),
            413,
        ),
        # unparseable framing: uvicorn's own (plain-text) 400, before the app
        ("bad Content-Length", head + b"Content-Length: ten\r\n\r\n", 400),
    ]
    with serving(app()) as url:
        for kind, request, status in cases:
            with bounded(LIMITS.timeout_s + 10):  # a stall must end in the server's 408
                answer = raw_exchange(url, request)
            status_line = answer.split(b"\r\n", 1)[0]
            OUTCOMES["raw socket", kind, status_line.decode()] += 1
            assert status_line.startswith(f"HTTP/1.1 {status}".encode()), (kind, answer[:300])
            if status != 400:
                assert b'{"detail":"' in answer, answer
        assert httpx.post(f"{url}/v1/classify", content=photo_bytes).status_code == 200
