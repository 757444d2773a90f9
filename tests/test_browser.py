"""The web page in headless Chromium: upload a photo, see the top-5 bars and labels.

Drives Debian's chromium through chromedriver's W3C WebDriver HTTP API (no extra Python
package; ``make install-test`` installs both). ``SQUEEZENET_UPDATE_SCREENSHOT=1`` also writes
the screenshot to docs/screenshot.png, the picture in docs/serve.md.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import REPO, shared_path
from live_server import serving

import squeezenet
from squeezenet.serve.app import create_app

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1000,640",
]  # fmt: skip
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
READ_RESULTS = """return [...document.querySelectorAll('#results li')].map(li => ({
    label: li.querySelector('.label span').textContent,
    percent: li.querySelector('.label span:last-child').textContent,
    width: parseFloat(li.querySelector('.bar').style.width)}));"""


class Browser:
    """The few WebDriver commands the test needs, on one session."""

    def __init__(self, driver_url: str, profile: Path, flags: tuple[str, ...] = ()) -> None:
        self.http = httpx.Client(base_url=driver_url, timeout=60)
        options = {"binary": shutil.which("chromium"), "args": [
            *CHROMIUM_FLAGS, *flags, f"--user-data-dir={profile}"]}  # fmt: skip
        caps = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        self.session = self.call("POST", "/session", {"capabilities": caps})["sessionId"]

    def call(self, method: str, path: str, body: dict | None = None):
        reply = self.http.request(method, path, json=body)
        value = reply.json()["value"]
        if reply.status_code != 200:
            raise RuntimeError(f"WebDriver {method} {path}: {value.get('message', value)}")
        return value

    def command(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def find(self, css: str) -> str:
        return self.command("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def script(self, source: str):
        return self.command("POST", "/execute/sync", {"script": source, "args": []})

    def wait_for(self, source: str, timeout: float = 60):
        """Poll a script until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while not (value := self.script(source)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied: {source}")
            time.sleep(0.1)
        return value

    def close(self) -> None:
        self.call("DELETE", f"/session/{self.session}")
        self.http.close()


@contextmanager
def chromium(profile: Path, flags: tuple[str, ...] = ()) -> Iterator[Browser]:
    """A Browser on a chromedriver of its own, started on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    driver = subprocess.Popen(
        ["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(f"{url}/status").json()["value"]["ready"]:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        browser = Browser(url, profile, flags)
        yield browser
        browser.close()
    finally:
        driver.terminate()
        driver.wait(30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Browser]:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("chromium and chromedriver are missing: run 'make install-test'")
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as browser:
        yield browser


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    model = squeezenet.load_model(shared_path("weights/ncnn/squeezenet_v1.1.ncnn.param"))
    with serving(create_app(model)) as url:
        yield url


def upload(browser: Browser, url: str, path: Path) -> None:
    browser.command("POST", "/url", {"url": url})
    browser.wait_for("return document.getElementById('model').textContent.includes('classes')")
    file_input = browser.find("#file")
    browser.command("POST", f"/element/{file_input}/value", {"text": str(path)})


def test_page_shows_top5_bars_for_chelsea(browser, page_url, tmp_path):
    photo = shared_path("data/photos/chelsea.png")
    upload(browser, page_url, photo)
    shown = browser.wait_for(READ_RESULTS)
    api = httpx.post(f"{page_url}/v1/classify", content=photo.read_bytes(), timeout=60).json()
    assert [row["label"] for row in shown] == [t["label"] for t in api["top"]]
    assert shown[0]["label"] in CAT_CLASSES
    assert [row["width"] for row in shown] == sorted((row["width"] for row in shown), reverse=True)
    assert abs(shown[0]["width"] - 100 * api["top"][0]["prob"]) < 0.01
    assert shown[0]["percent"] == f"{100 * api['top'][0]['prob']:.1f}%"
    timing = browser.script("return document.getElementById('timing').textContent")
    assert timing.startswith("server ") and "round trip" in timing
    assert browser.script("return document.getElementById('preview').naturalWidth") == 451

    png = base64.b64decode(browser.command("GET", "/screenshot"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "screenshot.png").write_bytes(png)
    if os.environ.get("SQUEEZENET_UPDATE_SCREENSHOT"):
        temporary = REPO / "docs" / ".screenshot.png.tmp"
        temporary.write_bytes(png)
        temporary.replace(temporary.with_name("screenshot.png"))


def test_page_shows_the_servers_error_for_a_file_that_is_not_an_image(browser, page_url, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    upload(browser, page_url, notes)
    error = browser.wait_for(
        "const e = document.getElementById('error'); return !e.hidden && e.textContent"
    )
    assert error.startswith("notes.txt: cannot decode image")
    assert browser.script("return document.querySelectorAll('#results li').length") == 0
