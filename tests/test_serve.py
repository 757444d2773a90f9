"""The HTTP service: same answers as ``predict --json``, batching, limits, metrics, CLI errors."""

from __future__ import annotations

import asyncio
import copy
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from conftest import shared_path
from fastapi.testclient import TestClient
from live_server import serving
from PIL import Image

import squeezenet
from squeezenet.cli import main
from squeezenet.errors import SqueezeNetError
from squeezenet.inference.backends import OnnxModel
from squeezenet.inference.pipeline import predict
from squeezenet.inference.quantize import quantize
from squeezenet.serve.app import Classification, Limits, create_app
from squeezenet.serve.batcher import BatchResult, MicroBatcher


@pytest.fixture(scope="module")
def model():
    return squeezenet.load_model(shared_path("weights/ncnn/squeezenet_v1.1.ncnn.param"))


@pytest.fixture(scope="module")
def client(model):
    limits = Limits(max_body_bytes=300_000, max_pixels=1_000_000, timeout_s=30)
    with TestClient(create_app(model, backend="eager", limits=limits)) as c:
        yield c


def png_bytes(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (90, 120, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("photo", ["chelsea.png", "cat.jpg"])
def test_classify_answers_as_predict_json(client, model, photo):
    path = shared_path(f"data/photos/{photo}")
    expected = predict(model, [path], topk=5, workers=0, progress=False)[0][0]["top"]
    data = path.read_bytes()
    as_file = client.post("/v1/classify", files={"file": (photo, data, "image/octet-stream")})
    as_body = client.post("/v1/classify?topk=3", content=data, headers={"content-type": "image/*"})
    assert as_file.status_code == as_body.status_code == 200
    assert as_file.json()["file"] == photo and as_body.json()["file"] == "upload"
    for answer, k in ((as_file.json(), 5), (as_body.json(), 3)):
        assert [t["index"] for t in answer["top"]] == [t["index"] for t in expected[:k]]
        assert [t["label"] for t in answer["top"]] == [t["label"] for t in expected[:k]]
        np.testing.assert_allclose(
            [t["prob"] for t in answer["top"]], [t["prob"] for t in expected[:k]], rtol=1e-4
        )
        assert set(answer["timing"]) == {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
        Classification.model_validate(answer, strict=True)  # the schema OpenAPI documents


def test_batcher_waits_for_requests_on_their_way_only():
    """Four requests being decoded share one batch; a lone request does not wait at all."""
    sizes: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return x.flatten(1)[:, :3] * 2

    async def scenario() -> list[BatchResult]:
        batcher = MicroBatcher(forward, max_batch=4, max_wait_ms=60_000)
        batcher.start()

        async def request(i: int) -> BatchResult:
            with batcher.expecting():
                await asyncio.sleep(0.01 * i)  # "decoding", finishing one after the other
            return await batcher(torch.full((3, 2, 2), float(i)))

        together = await asyncio.gather(*[request(i) for i in range(4)])
        alone = await asyncio.wait_for(batcher(torch.zeros(3, 2, 2)), 30)  # not 60 s
        await batcher.stop()
        return [*together, alone]

    results = asyncio.run(scenario())
    assert sizes == [4, 1]
    assert [r.batch_size for r in results] == [4, 4, 4, 4, 1]
    assert [r.logits.tolist() for r in results] == [[2 * i] * 3 for i in (0, 1, 2, 3, 0)]


def test_batcher_submit_queues_from_the_thread_and_passes_errors_on():
    """Inputs prepared in a pool join one batch; a failed one raises its error to its caller
    and stops counting as on its way (the next lone request does not wait 60 s)."""

    def prepare(i: int) -> torch.Tensor:
        if i < 0:
            raise SqueezeNetError("bad image")
        return torch.full((3,), float(i))

    async def scenario() -> tuple[list[BatchResult], BatchResult]:
        batcher = MicroBatcher(lambda x: x * 2, max_batch=8, max_wait_ms=60_000)
        batcher.start()
        with ThreadPoolExecutor(2) as pool:
            together = await asyncio.gather(*[batcher.submit(pool, prepare, i) for i in range(3)])
            with pytest.raises(SqueezeNetError, match="bad image"):
                await batcher.submit(pool, prepare, -1)
            alone = await asyncio.wait_for(batcher.submit(pool, prepare, 5), 30)
        await batcher.stop()
        return together, alone

    together, alone = asyncio.run(scenario())
    assert [r.batch_size for r in together] == [3, 3, 3]
    assert [r.logits.tolist() for r in together] == [[2.0 * i] * 3 for i in range(3)]
    assert alone.batch_size == 1 and alone.logits.tolist() == [10.0] * 3


def test_concurrent_requests_answers_and_metrics_agree(model, shared):
    """Eight different images at once, in batches of up to 4: each answer is the model's own
    answer for that image, so answers swapped within or between batches cannot pass."""
    photos = sorted(shared("data/photos").iterdir())
    paths = [*photos, sorted(shared("data/imagenet-val/images").iterdir())[0]][:8]
    expected = [r["top"] for r in predict(model, paths, topk=5, workers=0, progress=False)[0]]
    assert len({tuple(t["index"] for t in top) for top in expected}) == len(paths) == 8
    app = create_app(model, backend="eager", max_batch=4, max_wait_ms=1000)

    async def burst(url: str) -> list[dict]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            replies = await asyncio.gather(
                *[http.post("/v1/classify", content=p.read_bytes()) for p in paths]
            )
            return [r.json() for r in replies]

    with serving(app) as url:
        answers = asyncio.run(burst(url))
        metrics = httpx.get(f"{url}/metrics").text
    for path, answer, top in zip(paths, answers, expected, strict=True):
        assert [t["index"] for t in answer["top"]] == [t["index"] for t in top], path.name
        np.testing.assert_allclose(
            [t["prob"] for t in answer["top"]], [t["prob"] for t in top], rtol=1e-4
        )
    assert max(a["batch_size"] for a in answers) > 1  # some requests did share a batch
    batches = sum(1 / a["batch_size"] for a in answers)  # each batch of n answers n times
    assert f"squeezenet_batch_size_count {round(batches)}\n" in metrics
    assert "squeezenet_batch_size_sum 8.000000\n" in metrics
    assert 'squeezenet_requests_total{route="/v1/classify",status="200"} 8' in metrics


def test_request_over_the_timeout_is_a_408_and_the_server_goes_on(model):
    data = shared_path("data/photos/chelsea.png").read_bytes()
    app = create_app(model, backend="eager", limits=Limits(timeout_s=0.001))
    with TestClient(app) as c:
        late = c.post("/v1/classify", content=data)  # decoding alone takes longer than 1 ms
        assert late.status_code == 408 and "0.001 s limit" in late.json()["detail"]
        assert c.get("/healthz").json() == {"status": "ok"}


def test_weights_giving_nan_answer_a_json_500_saying_so(model):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.classifier[1].bias[3] = float("nan")
    with TestClient(create_app(broken, backend="eager")) as c:
        answer = c.post("/v1/classify", content=png_bytes((64, 64)))
        assert answer.status_code == 500
        assert "output is not finite (NaN or inf)" in answer.json()["detail"]
        assert c.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "content type"),
        ({"content": b""}, 400, "empty image"),
        ({"content": b"GIF89a not really"}, 422, "cannot decode image"),
        ({"content": png_bytes((64, 64))[:60]}, 422, "upload: cannot decode image"),
        ({"content": b"\0" * 300_001}, 413, "300,000-byte limit"),
        ({"content": png_bytes((1001, 1000))}, 422, "larger than the 1,000,000-pixel limit"),
        ({"files": {"file": ("a.png", b"1"), "more": ("b.png", b"2")}}, 400, "Too many files"),
        ({"data": {"name": "x"}, "files": {"none": ("", b"")}}, 400, "no file part"),
        ({"params": {"topk": 0}, "content": b"x"}, 422, "topk"),
        ({"params": {"topk": "five"}, "content": b"x"}, 422, "valid integer"),
    ],
)
def test_bad_requests_are_4xx_json_with_a_message(client, request_kwargs, status, message):
    reply = client.post("/v1/classify", **request_kwargs)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["detail"]


def test_models_health_metrics_openapi_page(client):
    meta = client.get("/v1/models").json()["models"][0]
    assert meta["arch"] == "squeezenet1_1" and meta["num_classes"] == 1000
    assert meta["preprocess"]["name"] == "torchvision" and meta["preprocess"]["crop"] == 224
    assert meta["serving"] == {"backend": "eager", "max_batch": 32, "max_wait_ms": 5.0}
    assert meta["limits"]["max_pixels"] == 1_000_000
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/nowhere").status_code == 404
    assert client.get("/v1/classify").status_code == 405
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'squeezenet_requests_total{route="/v1/models",status="200"} 1' in metrics.text
    assert 'squeezenet_errors_total{route="other",status="404"} 1' in metrics.text
    schema = client.get("/openapi.json").json()
    classify = schema["paths"]["/v1/classify"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(classify["requestBody"]["content"])
    answer = classify["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/Classification"}
    assert set(schema["components"]["schemas"]["Classification"]["properties"]) == {
        "file", "top", "batch_size", "timing"
    }  # fmt: skip
    [topk] = classify["parameters"]
    assert topk["name"] == "topk" and topk["schema"]["maximum"] == 1000
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert 'fetch("/v1/classify' in client.get("/static/app.js").text


def test_serve_runs_an_int8_onnx_file_as_predict_does(model, tmp_path, monkeypatch):
    import uvicorn

    path = tmp_path / "v11.int8.onnx"
    quantize(model, shared_path("data/imagenette/train"), path, num_images=4, progress=False)
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    assert main(["serve", "--weights", str(path)]) == 0
    photo = shared_path("data/photos/chelsea.png")
    expected = predict(OnnxModel(path), [photo], topk=3, workers=0, progress=False)[0][0]["top"]
    with TestClient(apps[0]) as c:
        answer = c.post("/v1/classify?topk=3", content=photo.read_bytes()).json()
        meta = c.get("/v1/models").json()["models"][0]
    assert [t["index"] for t in answer["top"]] == [t["index"] for t in expected]
    np.testing.assert_allclose(
        [t["prob"] for t in answer["top"]], [t["prob"] for t in expected], rtol=1e-4
    )
    assert meta["file_format"] == "onnx" and meta["source"] == str(path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--weights", "no/such.param"], "no such file"),
        (["--max-batch", "0"], "--max-batch: expected an integer in 1..1024, got 0"),
        (["--timeout", "0"], "--timeout: expected a number > 0, got 0"),
        (["--threads", "0"], "--threads: expected an integer in 1..256, got 0"),
    ],
)
def test_serve_cli_errors_are_one_line(capsys, argv, message):
    if "--weights" not in argv:
        argv = ["--weights", str(shared_path("weights/ncnn/squeezenet_v1.1.ncnn.param")), *argv]
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_error_handlers_answer_one_line_of_json():
    from fastapi.exceptions import RequestValidationError

    from squeezenet.serve.errors import internal_error, invalid_request

    problems = [
        {"loc": ("query", "topk"), "msg": "Input should be greater than or equal to 1"},
        {"loc": ("body",), "msg": "Field required"},
    ]
    reply = asyncio.run(invalid_request(None, RequestValidationError(problems)))
    assert reply.status_code == 422
    detail = "query topk: Input should be greater than or equal to 1; body: Field required"
    assert reply.body == b'{"detail":"' + detail.encode() + b'"}'
    reply = asyncio.run(internal_error(None, KeyError("secret")))
    assert (reply.status_code, reply.body) == (500, b'{"detail":"internal error (KeyError)"}')


def test_openapi_adds_what_classify_reads_by_hand_to_the_generated_schema():
    from typing import Annotated

    from pydantic import Field, TypeAdapter

    from squeezenet.serve.openapi import IMAGE_BODY, topk_parameter

    parameter = topk_parameter(TypeAdapter(Annotated[int, Field(ge=1, le=10)]))
    assert parameter["name"] == "topk" and parameter["in"] == "query"
    schema = {"type": "integer", "minimum": 1, "maximum": 10, "default": 5, "title": "Topk"}
    assert parameter["schema"] == schema
    assert set(IMAGE_BODY["content"]) == {
        "multipart/form-data",
        "image/*",
        "application/octet-stream",
    }


def test_routes_serve_the_service_in_app_state(model):
    """The handlers are plain functions of the request; the app only wires them."""
    from squeezenet.serve.routes import Service, models

    app = create_app(model, backend="eager", max_batch=2)
    service = app.state.service
    assert isinstance(service, Service) and service.info is model.weights_info
    request = type("FakeRequest", (), {"app": app})()
    [answer] = asyncio.run(models(request))["models"]
    assert answer["serving"] == {"backend": "eager", "max_batch": 2, "max_wait_ms": 5.0}
    limits = {"max_body_bytes": 20_000_000, "max_pixels": 25_000_000, "timeout_s": 30.0}
    assert answer["limits"] == limits
