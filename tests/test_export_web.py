"""The browser target: the exported folder classifies in headless Chromium as Python does.

Each folder is served on 127.0.0.1 by a plain ``http.server`` that logs every request; Chromium
resolves no host name but 127.0.0.1 (``--host-resolver-rules``), and every resource the page
loaded is checked to come from that server. The page's preprocessing (``squeezenet.js``) is
also checked bit for bit against ``data/transforms.py`` under Node, on sizes that take every
path of the resize (Pillow's two pass orders, PyTorch's enlarging kernel, padding).
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from conftest import REPO, shared_path
from fastapi.testclient import TestClient
from live_server import serving
from PIL import Image
from test_browser import CAT_CLASSES, chromium
from test_browser import READ_RESULTS as READ_BARS

import squeezenet
from squeezenet.cli import main
from squeezenet.data.transforms import PRESETS, Preprocess, load_image
from squeezenet.errors import SqueezeNetError
from squeezenet.inference.backends import OnnxModel
from squeezenet.inference.export import export, web
from squeezenet.inference.pipeline import evaluate, predict
from squeezenet.serve.app import create_app

WEIGHTS = {
    "v1_0": "weights/deep-compression/compressed_SqueezeNet.net",
    "v1_1": "weights/ncnn/squeezenet_v1.1.ncnn.param",
}
PHOTOS = "data/photos"
# Chromium resolves no name but 127.0.0.1: nothing the page asks for can leave this machine
LOOPBACK_ONLY = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",)
RESULT = "return document.getElementById('result').textContent"
RESOURCES = "return performance.getEntriesByType('resource').map(e => e.name)"


def runtime_or_skip() -> None:
    try:
        web.runtime_files()
    except SqueezeNetError as e:
        pytest.skip(f"onnxruntime-web is not installed: {e}")


class Handler(http.server.SimpleHTTPRequestHandler):
    """The export folder at /, a folder of photos under /photos/; every request logged."""

    def __init__(self, *args, folder: Path, photos: Path, log: list, **kwargs) -> None:
        self.folder, self.photos, self.log = folder, photos, log
        super().__init__(*args, directory=str(folder), **kwargs)

    def translate_path(self, path: str) -> str:
        self.log.append((self.client_address[0], path))
        if path.startswith("/photos/"):
            return str(self.photos / Path(path.split("?")[0]).name)
        return super().translate_path(path)

    def log_message(self, *args) -> None:  # quiet: the log list is what the test reads
        pass


@contextmanager
def static_server(folder: Path, log: list, photos: Path | None = None) -> Iterator[str]:
    photos = photos or shared_path(PHOTOS)
    handler = functools.partial(Handler, folder=folder, photos=photos, log=log)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromedriver are missing: run 'make install-test'")
    runtime_or_skip()
    with chromium(tmp_path_factory.mktemp("chromium-profile"), LOOPBACK_ONLY) as browser:
        yield browser


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The shared photos, and the kinds of file whose decoding could differ: EXIF-rotated,
    grayscale, palette, transparent and translucent, CMYK and progressive."""
    folder = tmp_path_factory.mktemp("photos")
    for photo in shared_path(PHOTOS).iterdir():
        (folder / photo.name).symlink_to(photo)
    cat = Image.open(shared_path(f"{PHOTOS}/cat.jpg"))
    exif = cat.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to show
    cat.save(folder / "x-rotated.jpg", exif=exif, quality=90)
    cat.convert("L").save(folder / "x-gray.jpg", quality=90)
    cat.convert("CMYK").save(folder / "x-cmyk.jpg", quality=90)
    cat.save(folder / "x-progressive.jpg", progressive=True, quality=90)
    chelsea = Image.open(shared_path(f"{PHOTOS}/chelsea.png"))
    chelsea.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "x-palette.png")
    rgba = np.array(chelsea.convert("RGBA"))
    rgba[:80, :, 3], rgba[80:160, :, 3] = 0, 128
    Image.fromarray(rgba).save(folder / "x-alpha.png")
    return folder


@pytest.fixture(scope="module", params=[*sorted(WEIGHTS), "v1_1-int8"])
def exported(request, tmp_path_factory):
    """(model, folder): the weights and their web export; int8 calibrated on 20 training
    images (imagenet-sample, never the images classified here)."""
    runtime_or_skip()
    name, _, kind = request.param.partition("-")
    model = squeezenet.load_model(shared_path(WEIGHTS[name]))
    folder = tmp_path_factory.mktemp("web") / request.param
    options = {}
    if kind == "int8":
        calibration = tmp_path_factory.mktemp("calibration")
        for image in sorted((shared_path("data/imagenet-sample") / "images").iterdir())[:20]:
            (calibration / image.name).symlink_to(image)
        options = {"int8": True, "calibration": calibration}
    export(model, folder, "web", **options)
    return model, folder


def classify_in_page(browser, base: str, image: str) -> dict:
    browser.command("POST", "/url", {"url": f"{base}/index.html?image={image}"})
    result = json.loads(browser.wait_for(RESULT, timeout=120))
    assert "error" not in result, result["error"]
    return result


def onnxruntime_logits(onnx_file: Path, model, photo: Path) -> np.ndarray:
    """ONNX Runtime in Python on the folder's graph, with our Python preprocessing."""
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = model.weights_info.preprocess(load_image(photo))[None].numpy()
    return session.run(None, {session.get_inputs()[0].name: x})[0][0]


def test_folder_holds_the_page_runtime_model_and_metadata(exported):
    model, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*web.PAGE_FILES, *web.RUNTIME, web.MODEL, web.INFO]
    )
    info = json.loads((folder / web.INFO).read_text())
    assert Preprocess.from_dict(info["preprocess"]) == model.weights_info.preprocess
    assert info["classes"] == model.weights_info.classes
    assert info["int8"] == ("int8" in folder.name) == bool(info["quantization"])
    package = json.loads((web.NODE_MODULES.parent / "package.json").read_text())
    assert info["onnxruntime_web"] == package["dependencies"]["onnxruntime-web"]
    page = "".join((folder / name).read_text() for name in web.PAGE_FILES)
    assert "http" not in page  # no CDN: every URL the page names is relative


def test_page_classifies_each_photo_as_python_does(browser, exported, photos):
    """Top-1 as ``predict``; logits within 1e-4 of ONNX Runtime on our preprocessing (int8:
    onnxruntime-web's WASM kernels gave the very same logits as ONNX Runtime's on x86).

    Chromium and Pillow decode these JPEGs and PNGs to the same bytes (both libjpeg-turbo,
    no colour management: the page asks createImageBitmap for none), so the JPEGs count too.
    """
    model, folder = exported
    files = sorted(photos.iterdir())
    int8 = json.loads((folder / web.INFO).read_text())["int8"]
    python = OnnxModel(folder / web.MODEL) if int8 else model  # int8: the folder's graph
    expected, _ = predict(python, files, workers=0, progress=False)
    log: list = []
    with static_server(folder, log, photos) as base:
        for photo, top in zip(files, expected, strict=True):
            page = classify_in_page(browser, base, f"/photos/{photo.name}")
            reference = onnxruntime_logits(folder / web.MODEL, model, photo)
            logits = np.asarray(page["logits"], np.float32)
            error = np.abs(logits - reference).max() / np.abs(reference).max()
            assert error < 1e-4, f"{photo.name}: logits differ by {error:.2e} of the largest"
            assert page["top"][0]["index"] == top["top"][0]["index"], photo.name
            assert [t["label"] for t in page["top"]] == [t["label"] for t in top["top"]]
            assert page["top"][0]["prob"] == pytest.approx(top["top"][0]["prob"], abs=1e-4)
        resources = browser.script(RESOURCES)
    assert {f"{base}/{name}" for name in (*web.RUNTIME, web.MODEL, web.INFO)} <= set(resources)
    assert all(url.startswith(f"{base}/") for url in resources), resources
    assert {client for client, _ in log} == {"127.0.0.1"}
    assert any(path == f"/{web.MODEL}" for _, path in log)


def test_page_draws_the_top5_of_a_chosen_photo(browser, exported, tmp_path):
    """The user's way in: a photo picked in the file input, the top-5 drawn as bars.

    ``SQUEEZENET_UPDATE_SCREENSHOT=1`` also writes the v1.1 page to docs/web.png.
    """
    model, folder = exported
    photo = shared_path(f"{PHOTOS}/chelsea.png")
    with static_server(folder, []) as base:
        browser.command("POST", "/url", {"url": f"{base}/index.html"})
        browser.wait_for("return document.getElementById('model').textContent.includes('classes')")
        browser.command("POST", f"/element/{browser.find('#file')}/value", {"text": str(photo)})
        shown = browser.wait_for(READ_BARS, timeout=120)
        result = json.loads(browser.script(RESULT))
        png = base64.b64decode(browser.command("GET", "/screenshot"))
    assert [row["label"] for row in shown] == [t["label"] for t in result["top"]]
    assert [row["percent"] for row in shown] == [f"{100 * t['prob']:.1f}%" for t in result["top"]]
    assert [row["width"] for row in shown] == sorted((row["width"] for row in shown), reverse=True)
    assert shown[0]["label"] in CAT_CLASSES
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "web.png").write_bytes(png)
    if os.environ.get("SQUEEZENET_UPDATE_SCREENSHOT") and model.weights_info.arch.endswith("1_1"):
        temporary = REPO / "docs" / ".web.png.tmp"
        temporary.write_bytes(png)
        temporary.replace(temporary.with_name("web.png"))


def test_page_says_why_a_file_is_not_classified(browser, exported, tmp_path):
    _, folder = exported
    (tmp_path / "notes.jpg").write_text("not a photo")
    with static_server(folder, [], tmp_path) as base:
        for image, message in [("notes.jpg", "could not be decoded"), ("gone.jpg", "HTTP 404")]:
            browser.command("POST", "/url", {"url": f"{base}/index.html?image=/photos/{image}"})
            assert message in json.loads(browser.wait_for(RESULT, timeout=60))["error"]
            assert browser.script("return document.getElementById('error').hidden") is False
            assert browser.script("return document.querySelectorAll('#results li').length") == 0


def test_chromium_reaches_no_address_but_127_0_0_1(browser, exported):
    """The resolver rule is in force, for names and IP literals alike: the same server by the
    name localhost or another loopback address is never looked up (without the rule:
    the page, and a refused connection)."""
    _, folder = exported
    with static_server(folder, []) as base:
        for host in ("localhost", "127.0.0.2"):
            url = base.replace("127.0.0.1", host)
            with pytest.raises(RuntimeError, match="ERR_NAME_NOT_RESOLVED"):
                browser.command("POST", "/url", {"url": f"{url}/{web.INFO}"})


def js_pixels(tmp_path: Path, cases: list[dict]) -> None:
    """Run ``SqueezeNet.pixels`` and ``normalize`` under Node on each case's raw RGB file;
    they go to ``FILE.px`` and ``FILE.x``."""
    script = tmp_path / "run.js"
    script.write_text(
        "const fs = require('fs');\n"
        f"const S = require({json.dumps(str(web.PAGE / 'squeezenet.js'))});\n"
        "const out = JSON.parse(fs.readFileSync(process.argv[2])).map((c) => {\n"
        "  const rgb = new Uint8Array(fs.readFileSync(c.file));\n"
        "  const px = S.pixels(rgb, c.width, c.height, c.pre);\n"
        "  fs.writeFileSync(c.file + '.px', px);\n"
        "  fs.writeFileSync(c.file + '.x', S.normalize(px, c.pre));\n"
        "});\n"
    )
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    subprocess.run(["node", str(script), str(tmp_path / "cases.json")], check=True, timeout=300)


SIZES = [
    (480, 364),  # a photo: shrink, horizontal pass first
    (257, 1000),  # tall: Pillow 13 goes vertical first
    (1000, 257),
    (227, 227),  # imagenet-val: enlarged by PyTorch's kernel (int16 weights)
    (224, 224),
    (13, 7),
    (255, 256),  # enlarged one way only: Pillow
    (301, 300),
    (256, 256),  # no resize at all for the caffe preset
]


def test_javascript_preprocessing_is_bit_for_bit_the_pythons(tmp_path):
    if not shutil.which("node"):
        pytest.skip("node is missing: run 'make install'")
    rng = np.random.default_rng(0)
    cases, expected = [], []
    for i, (w, h) in enumerate(SIZES):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        file = tmp_path / f"{i}.rgb"
        file.write_bytes(np.asarray(image).tobytes())
        for preset in PRESETS.values():
            for pre in (preset, preset.with_size(128), preset.with_size(300)):
                out = tmp_path / f"{i}-{pre.name}-{pre.crop}.rgb"
                shutil.copyfile(file, out)
                cases.append({"file": str(out), "width": w, "height": h, "pre": pre.to_dict()})
                expected.append((pre.pixels(image).numpy(), pre(image).numpy()))
    js_pixels(tmp_path, cases)
    for case, (pixels, x) in zip(cases, expected, strict=True):
        got = np.frombuffer(Path(case["file"] + ".px").read_bytes(), np.uint8)
        assert np.array_equal(got, pixels.ravel()), case
        assert np.array_equal(np.fromfile(case["file"] + ".x", np.float32), x.ravel()), case


def test_without_the_pinned_onnxruntime_web_export_says_to_run_npm_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(web, "NODE_MODULES", tmp_path / "node_modules")
    model = squeezenet.create_model("squeezenet1_1")
    with pytest.raises(SqueezeNetError, match=r"not installed .*run 'make install' or 'npm ci'"):
        export(model, tmp_path / "page", "web")
    assert not (tmp_path / "page").exists()
    dist = tmp_path / "node_modules" / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    for name in web.RUNTIME:
        (dist / name).write_text("")
    (dist.parent / "package.json").write_text('{"version": "1.29.0"}')  # a stale npm install
    with pytest.raises(SqueezeNetError, match=r"onnxruntime-web 1.29.0 is installed, the page is"):
        export(model, tmp_path / "page", "web")


def test_cli_errors_are_one_line(tmp_path, capsys):
    runtime_or_skip()
    v11 = str(shared_path(WEIGHTS["v1_1"]))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for argv, message in [
        (["-o", str(tmp_path / "page"), "--int8"], "--int8 needs --calibration DIR"),
        (["-o", str(tmp_path / "mine")], "mine: exists and is not a web export"),
        (["-o", str(tmp_path / "no" / "page")], "folder"),
    ]:
        assert main(["export", "--weights", v11, "--format", "web", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing half-written


def test_export_replaces_an_earlier_export_whole(tmp_path):
    runtime_or_skip()
    model = squeezenet.create_model("squeezenet1_1")
    export(model, tmp_path / "page", "web")
    (tmp_path / "page" / "stale.js").write_text("from an earlier version")
    export(model, tmp_path / "page", "web")
    assert not (tmp_path / "page" / "stale.js").exists() and (tmp_path / "page" / web.INFO).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_int8_folder_top1_within_a_point_of_fp32(name, tmp_path):
    """Calibrated on imagenet-sample (training images), measured on the 650 imagenet-val."""
    runtime_or_skip()
    weights, val = str(shared_path(WEIGHTS[name])), shared_path("data/imagenet-val")
    calibration = str(shared_path("data/imagenet-sample"))
    export_web = ["export", "--weights", weights, "--format", "web", "-o"]
    assert main([*export_web, str(tmp_path / "fp32")]) == 0
    assert main([*export_web, str(tmp_path / "int8"), "--int8", "--calibration", calibration]) == 0
    info = json.loads((tmp_path / "int8" / web.INFO).read_text())
    assert info["int8"] and "calibration on 300 images" in info["quantization"]
    accuracy = {
        kind: evaluate(OnnxModel(tmp_path / kind / web.MODEL), val, workers=0, progress=False)
        for kind in ("fp32", "int8")
    }
    print(name, json.dumps(accuracy))
    assert accuracy["int8"]["n"] == accuracy["fp32"]["n"] == 650
    assert accuracy["fp32"]["top1"] - accuracy["int8"]["top1"] <= 0.010


@pytest.fixture(scope="module")
def v11():
    return squeezenet.load_model(shared_path(WEIGHTS["v1_1"]))


def test_serve_gives_the_in_browser_files(v11, tmp_path, monkeypatch):
    runtime_or_skip()
    photo = shared_path(f"{PHOTOS}/chelsea.png")
    with TestClient(create_app(v11, backend="eager")) as client:
        info = client.get("/web/model.json").json()
        graph = client.get("/web/model.onnx")
        answer = client.post("/v1/classify?topk=1", content=photo.read_bytes()).json()
        script = client.get("/web/ort-wasm-simd-threaded.mjs")
        assert script.headers["content-type"].startswith("text/javascript")
        wasm = client.get("/web/ort-wasm-simd-threaded.wasm")
        assert wasm.headers["content-type"] == "application/wasm"
        assert client.get("/web/squeezenet.js").text == (web.PAGE / "squeezenet.js").read_text()
        for name in ("bars.js", "style.css"):  # the serve page draws with the exported page's
            assert client.get(f"/web/{name}").text == (web.PAGE / name).read_text()
        assert client.get("/web/style.css").headers["content-type"].startswith("text/css")
        assert client.get("/web/app.js").status_code == 404
        monkeypatch.setattr(web, "NODE_MODULES", tmp_path)
        missing = client.get("/web/ort.wasm.min.js")
    assert info["classes"] == v11.weights_info.classes and info["int8"] is False
    assert missing.status_code == 404
    assert "run 'make install' or 'npm ci'" in missing.json()["detail"]
    (tmp_path / "served.onnx").write_bytes(graph.content)
    logits = onnxruntime_logits(tmp_path / "served.onnx", v11, photo)
    assert int(np.argmax(logits)) == answer["top"][0]["index"]


def test_serve_page_in_browser_mode_uploads_nothing(browser, v11):
    """Ticked, the page classifies with the served graph in Chromium: the server's top-5, and
    no request to /v1/classify (the metrics count none)."""
    photo = shared_path(f"{PHOTOS}/chelsea.png")
    with serving(create_app(v11)) as url:
        browser.command("POST", "/url", {"url": url})
        browser.wait_for("return document.getElementById('model').textContent.includes('classes')")
        browser.command("POST", f"/element/{browser.find('#in-browser')}/click", {})
        browser.command("POST", f"/element/{browser.find('#file')}/value", {"text": str(photo)})
        shown = browser.wait_for(READ_BARS, timeout=120)
        timing = browser.script("return document.getElementById('timing').textContent")
        resources = browser.script(RESOURCES)
        metrics = httpx.get(f"{url}/metrics").text
        api = httpx.post(f"{url}/v1/classify", content=photo.read_bytes(), timeout=60).json()
    assert timing.startswith("in this browser:") and "nothing uploaded" in timing
    assert [row["label"] for row in shown] == [t["label"] for t in api["top"]]
    assert [row["percent"] for row in shown] == [f"{100 * t['prob']:.1f}%" for t in api["top"]]
    assert 'route="/v1/classify"' not in metrics
    assert f"{url}/web/model.onnx" in resources
    assert all(u.startswith(f"{url}/") for u in resources), resources
