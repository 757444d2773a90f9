"""The README's commands on their success path, through the command line, with small real files:
list, download (from a local file:// source and from a pre-filled cache), bench, demo, convert
to .pth/.caffemodel/.npz, predict --backend, train --freeze-features and serve --backend auto.
Nothing is downloaded from the network."""

from __future__ import annotations

import csv
import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from test_train import CLASSES, make_subset

import squeezenet
from squeezenet.cli import main
from squeezenet.data.transforms import load_image
from squeezenet.models import list_models
from squeezenet.weights import entries

DC = "weights/deep-compression/compressed_SqueezeNet.net"
PROTOTXT = "weights/deep-compression/SqueezeNet_deploy.prototxt"
NCNN = "weights/ncnn/squeezenet_v1.1.ncnn.param"
CHAINER = "weights/chainer-seed-format/weights.npz"
PHOTOS = ["chelsea.png", "coffee.png", "cat.jpg"]
# The top-1 of both ImageNet weights on those photos (checked by eye: a cat, an espresso cup,
# an orange kitten that both networks take for a fox).
TOP1 = ["Egyptian cat", "espresso", "kit fox"]


def run(capsys, *argv) -> str:
    """Run one command in this process; its stdout, after checking that it exited with 0."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def photo_batch(shared, model: torch.nn.Module) -> torch.Tensor:
    preprocess = model.weights_info.preprocess
    return torch.stack([preprocess(load_image(shared(f"data/photos/{p}"))) for p in PHOTOS])


def logits_of(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_list_names_every_architecture_and_every_weights_entry(capsys):
    lines = run(capsys, "list").splitlines()
    assert lines[0] == "architectures: " + ", ".join(list_models())
    assert lines[1] == "named weights:"
    listed = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(listed) == set(entries.ENTRIES) == {
        "squeezenet1_0.deep_compression", "squeezenet1_1.ncnn",
        "squeezenet1_0.torchvision", "squeezenet1_1.torchvision",
    }  # fmt: skip
    for name, entry in entries.ENTRIES.items():
        assert listed[name][1] == entry.arch and listed[name][-1] == entry.url


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty $SQUEEZENET_HOME."""
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def point_entry_at(monkeypatch, name: str, url: str) -> None:
    """Point a registered entry at another URL (a local file:// one), its hash unchanged."""
    monkeypatch.setitem(entries.ENTRIES, name, dataclasses.replace(entries.ENTRIES[name], url=url))


def test_download_from_a_file_url_checks_the_hash_and_loads_by_name(
    shared, home, monkeypatch, capsys
):
    name, source = "squeezenet1_0.deep_compression", shared(DC)
    point_entry_at(monkeypatch, name, source.as_uri())
    cached = home / "compressed_SqueezeNet.net"
    printed = run(capsys, "download", name).splitlines()
    assert printed == [f"downloading {source.as_uri()}", f"{cached}: ok"]
    assert cached.read_bytes() == source.read_bytes()
    assert run(capsys, "download", name).splitlines() == [f"{cached}: already present"]
    model = squeezenet.load_model(name)  # the name now finds the cached file
    assert model.weights_info.entry == name and model.weights_info.arch == "squeezenet1_0"
    x = photo_batch(shared, model)
    assert torch.equal(logits_of(model, x), logits_of(squeezenet.load_model(source), x))


def test_download_with_a_prefilled_cache_fetches_nothing(
    shared, home, tmp_path, monkeypatch, capsys
):
    name = "squeezenet1_1.ncnn"
    home.mkdir()
    for suffix in (".param", ".bin"):
        source = shared(NCNN).with_suffix(suffix)
        (home / source.name).write_bytes(source.read_bytes())
    nowhere = tmp_path / "nowhere" / "squeezenet_v1.1.ncnn.param"  # fetching it would fail
    point_entry_at(monkeypatch, name, nowhere.as_uri())
    assert run(capsys, "download", name).splitlines() == [
        f"{home / 'squeezenet_v1.1.ncnn.param'}: already present",
        f"{home / 'squeezenet_v1.1.ncnn.bin'}: already present",
    ]


def test_download_of_a_file_with_another_hash_fails_and_leaves_nothing(
    shared, home, monkeypatch, capsys
):
    name = "squeezenet1_0.deep_compression"
    other = home.parent / "elsewhere" / "compressed_SqueezeNet.net"
    other.parent.mkdir()
    other.write_bytes(shared(DC).read_bytes()[:-1] + b"\0")  # one byte changed
    point_entry_at(monkeypatch, name, other.as_uri())
    assert main(["download", name]) == 2
    assert "does not match e4ab6960" in capsys.readouterr().err
    assert list(home.iterdir()) == []


def test_bench_reports_each_backend_against_the_floor(capsys):
    argv = ["--arch", "squeezenet1_1", "--batch", "1", "--threads", "1", "--backends", "eager"]
    result = json.loads(run(capsys, "bench", *argv, "--repeats", "1", "--json"))
    described = (result["arch"], result["weights"], result["image_size"], result["repeats"])
    assert described == ("squeezenet1_1", None, 224, 1)
    assert result["macs"] == 349_151_936  # `squeezenet info squeezenet1_1`: 0.349 G
    [row] = result["rows"]
    assert (row["backend"], row["threads"], row["batch"], row["vs_eager"]) == ("eager", 1, 1, 1.0)
    assert row["images_per_s"] == pytest.approx(1 / row["seconds"])
    floor = result["floor_ops_per_s"]["1"]
    assert set(floor) >= {"torch fp32", "onnxruntime fp32"}
    # the time 349,151,936 multiply-accumulates take at the best fp32 rate (2 FLOP each)
    best = max(floor["torch fp32"], floor["onnxruntime fp32"])
    assert row["of_floor"] * row["seconds"] == pytest.approx(2 * 349_151_936 / best)


def mini_shared(shared, root: Path, n_val: int = 10) -> Path:
    """A shared folder with the demo's two weights, two photos and the first n_val val images."""
    for relative in [DC, NCNN, NCNN.replace(".param", ".bin"), "data/imagenet_classes.tsv",
                     "data/photos/chelsea.png", "data/photos/coffee.png"]:  # fmt: skip
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).symlink_to(shared(relative))
    val = root / "data/imagenet-val"
    (val / "images").mkdir(parents=True)
    rows = list(csv.reader(shared("data/imagenet-val/labels.csv").open()))[: n_val + 1]
    with (val / "labels.csv").open("w") as f:
        csv.writer(f).writerows(rows)
    for file, _ in rows[1:]:
        (val / file).symlink_to(shared("data/imagenet-val") / file)
    return root


def test_demo_classifies_the_photos_and_evaluates_both_weights(
    shared, tmp_path, home, monkeypatch, capsys
):
    root = mini_shared(shared, tmp_path / "shared")
    monkeypatch.setenv("SQUEEZENET_SHARED", str(root))
    lines = run(capsys, "demo", "--shared", root).splitlines()
    assert [line for line in lines if line.startswith("==")] == [
        "== compressed_SqueezeNet.net: squeezenet1_0, preprocessing 'caffe'",
        "== squeezenet_v1.1.ncnn.param: squeezenet1_1, preprocessing 'torchvision'",
    ]
    photos = [line.split()[:3] for line in lines if ".png" in line]
    assert photos == [
        ["chelsea.png", "Egyptian", "cat"], ["coffee.png", "espresso", "96%,"],
        ["chelsea.png", "Egyptian", "cat"], ["coffee.png", "espresso", "84%,"],
    ]  # fmt: skip
    # measured on these 10 images with both weights (the same for both by chance)
    evaluated = [line.strip() for line in lines if "imagenet-val" in line]
    assert evaluated == ["imagenet-val: top-1 60.0%  top-5 80.0%  (10 images)"] * 2


@pytest.mark.parametrize(
    ("source", "suffix", "arch"),
    [(NCNN, ".pth", "squeezenet1_1"), (DC, ".caffemodel", "squeezenet1_0"),
     (CHAINER, ".npz", "squeezenet1_0_chainer")],
)  # fmt: skip
def test_convert_writes_a_file_that_gives_the_same_logits(
    shared, tmp_path, capsys, source, suffix, arch
):
    original = squeezenet.load_model(shared(source))
    out_file = tmp_path / f"converted{suffix}"
    out = run(capsys, "convert", shared(source), "-o", out_file)
    assert out.strip() == (
        f"{out_file}: {arch}, 1000 classes, from {original.weights_info.file_format}"
    )
    # Only safetensors keeps metadata: Caffe's conv10 padding comes back from its prototxt.
    prototxt = shared(PROTOTXT) if suffix == ".caffemodel" else None
    back = squeezenet.load_model(out_file, prototxt=prototxt)
    assert back.weights_info.arch == arch
    if source == CHAINER:  # the input and logits that Chainer itself computed
        x = torch.from_numpy(np.load(shared("weights/chainer-seed-format/input.npy")))
    else:
        x = photo_batch(shared, original)
    assert torch.equal(logits_of(back, x), logits_of(original, x))


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])  # auto: see the serve test
def test_predict_backend_gives_the_eager_logits(shared, tmp_path, capsys, backend):
    photos = [shared(f"data/photos/{p}") for p in PHOTOS]
    out = run(capsys, "predict", *photos, "--weights", shared(NCNN), "--backend", backend,
              "--json", "--topk", "2", "--save-logits", tmp_path / "l.npy", "--workers", "0",
              "--no-progress")  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in rows] == [str(p) for p in photos]
    assert [r["top"][0]["label"] for r in rows] == TOP1
    model = squeezenet.load_model(shared(NCNN))
    expected = logits_of(model, photo_batch(shared, model))
    assert relative_error(torch.from_numpy(np.load(tmp_path / "l.npy")), expected) < 1e-5


def test_train_freeze_features_changes_the_head_only(shared, tmp_path, capsys):
    data = make_subset(tmp_path / "data", shared, {"train": 2, "val": 1})  # one step an epoch
    out = tmp_path / "run"
    run(capsys, "train", data, "--out", out, "--weights", shared(NCNN), "--freeze-features",
        "--epochs", "2", "--batch-size", "8", "--micro-batch", "8", "--lr", "0.01",
        "--backbone-lr", "0.1", "--momentum", "0.9", "--weight-decay", "2e-4", "--warmup", "0",
        "--schedule", "linear", "--label-smoothing", "0.1", "--min-scale", "0.25",
        "--image-size", "128", "--seed", "0", "--workers", "0", "--no-progress")  # fmt: skip
    start = squeezenet.load_model(shared(NCNN)).state_dict()
    trained = squeezenet.load_model(out / "last.safetensors")
    assert trained.weights_info.class_ids == CLASSES
    state = trained.state_dict()
    features = [k for k in state if k.startswith("features.")]
    assert len(features) == 50  # conv1 and 8 Fires x 3 convs, weight and bias
    for k in features:
        assert torch.equal(state[k], start[k]), f"{k} changed although frozen"
    # The head starts from the ImageNet rows of the four classes and then trains.
    rows = [0, 217, 566, 701]  # tench, English springer, French horn, parachute
    for k in ("classifier.1.weight", "classifier.1.bias"):
        moved = (state[k] - start[k][rows]).abs().max().item()
        assert moved > 1e-5, f"{k} did not train ({moved:.1e})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_backend_auto_answers_on_a_real_port(shared):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "squeezenet", "serve", "--weights", str(shared(NCNN)),
         "--backend", "auto", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + 300  # a watchdog against a server that never starts
        while True:
            assert server.poll() is None, server.communicate()[1][-3000:]
            assert time.monotonic() < give_up, "the server did not start"
            try:
                if httpx.get(f"{url}/healthz").json() == {"status": "ok"}:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        for name, label in zip(PHOTOS, TOP1, strict=True):
            photo = shared(f"data/photos/{name}").read_bytes()
            reply = httpx.post(f"{url}/v1/classify", content=photo, params={"topk": 3}, timeout=60)
            assert reply.status_code == 200, reply.text
            assert len(reply.json()["top"]) == 3 and reply.json()["top"][0]["label"] == label
        [served] = httpx.get(f"{url}/v1/models").json()["models"]
        assert (served["id"], served["arch"]) == ("squeezenet1_1.ncnn", "squeezenet1_1")
        assert served["serving"]["backend"] == "auto"
    finally:
        server.terminate()
        server.communicate(timeout=60)
