"""The command line: JSON output, logits files, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import squeezenet

NCNN = "weights/ncnn/squeezenet_v1.1.ncnn.param"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "squeezenet", *map(str, args)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def test_predict_json_and_logits(shared, tmp_path):
    photos = shared("data/photos")
    images = [photos / "chelsea.png", photos / "coffee.png"]
    out = cli("predict", *images, "--weights", shared(NCNN), "--json", "--topk", "3",
              "--save-logits", tmp_path / "l.npy", "--workers", "0")  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(photos / "chelsea.png"), str(photos / "coffee.png")]
    assert all(len(r["top"]) == 3 and set(r["top"][0]) == {"index", "label", "prob"} for r in rows)
    assert rows[0]["top"][0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert rows[1]["top"][0]["label"] in {"espresso", "cup", "coffee mug"}
    logits = np.load(tmp_path / "l.npy")
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    assert [int(np.argmax(row)) for row in logits] == [r["top"][0]["index"] for r in rows]


def test_evaluate_json_on_an_image_folder_tree(shared, tmp_path):
    """An ImageFolder tree of wnid folders is mapped through the ImageNet class list."""
    val = shared("data/imagenette/val")
    for wnid in ("n01440764", "n03425413"):  # tench, gas pump
        (tmp_path / wnid).mkdir()
        for f in sorted((val / wnid).iterdir())[:4]:
            (tmp_path / wnid / f.name).symlink_to(f)
    out = cli("evaluate", tmp_path, "--weights", shared(NCNN), "--json", "--workers", "0")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["top1"], result["top5"], result["n"]) == (0.75, 0.875, 8)  # measured: 6, 7


@pytest.mark.parametrize(
    "args,message",
    [
        (["predict", "/nonexistent.jpg", "--weights", "x"], "/nonexistent.jpg: no such file"),
        (["evaluate", "/nonexistent_dir", "--weights", "x"], "no such file"),
        (["info", "squeezenet1_1", "--image-size", "8"], "too small"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message):
    out = cli(*args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_corrupt_image_and_truncated_weights(shared, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    out = cli("predict", tmp_path / "bad.jpg", "--weights", shared(NCNN), "--workers", "0")
    assert out.returncode == 1 and "bad.jpg: cannot decode image" in out.stderr  # skipped, named
    data = shared("weights/ncnn/squeezenet_v1.1.ncnn.bin").read_bytes()
    (tmp_path / "w.param").write_bytes(shared(NCNN).read_bytes())
    (tmp_path / "w.bin").write_bytes(data[: len(data) // 2])
    out = cli("predict", shared("data/photos/cat.jpg"), "--weights", tmp_path / "w.param")
    assert out.returncode == 2 and "w.bin" in out.stderr and "Traceback" not in out.stderr


def test_demo_without_shared_explains_where_weights_come_from(tmp_path):
    out = cli("demo", "--shared", tmp_path)
    assert out.returncode == 2 and "squeezenet download" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_info_prints_params_size_and_macs():
    out = cli("info", "squeezenet1_0", "--image-size", "224")
    assert "1,248,424" in out.stdout and "4.99 MB" in out.stdout and "0.819 G" in out.stdout


def test_weights_giving_nan_are_a_one_line_error_in_predict(shared, tmp_path):
    model = squeezenet.load_model(shared(NCNN))
    with torch.no_grad():
        model.classifier[1].bias[7] = float("nan")
    squeezenet.save_model(model, tmp_path / "nan.safetensors")
    out = cli("predict", shared("data/photos/cat.jpg"), "--weights", tmp_path / "nan.safetensors",
              "--workers", "0")  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "nan.safetensors: the model's output is not finite" in out.stderr
