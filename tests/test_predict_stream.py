"""Streaming predict: bad files skipped and named, --strict, --resume after SIGKILL, --shard."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

import squeezenet
from squeezenet.cli import main
from squeezenet.errors import SqueezeNetError
from squeezenet.inference import ray_predict
from squeezenet.inference.pipeline import predict
from squeezenet.inference.stream import completed_files, shard

NCNN = "weights/ncnn/squeezenet_v1.1.ncnn.param"


def cli(*args, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "squeezenet", *map(str, args)],
        capture_output=True, text=True, timeout=300, input=stdin, env=env,
    )  # fmt: skip


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 200-byte 1-bit PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 4)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def val_folder(shared, folder: Path, count: int) -> list[Path]:
    """``count`` imagenet-val images linked into ``folder``; their sorted paths."""
    folder.mkdir()
    for f in sorted(shared("data/imagenet-val/images").iterdir())[:count]:
        (folder / f.name).symlink_to(f)
    return sorted(folder.iterdir())


def add_bad_files(shared, folder: Path) -> list[Path]:
    """The four kinds of broken file a photo library holds; their paths."""
    bad = {
        "trunc.jpg": shared("data/photos/cat.jpg").read_bytes()[:3000],
        "bomb.png": bomb_png(),
        "text.jpg": b"not an image, just text\n",
        "empty.png": b"",
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in bad]


def test_bad_files_are_skipped_named_and_counted(shared, tmp_path):
    good = val_folder(shared, tmp_path / "mix", 12)
    bad = add_bad_files(shared, tmp_path / "mix")
    args = ["--weights", shared(NCNN), "--json", "--topk", "3", "--batch-size", "4"]
    out = cli("predict", tmp_path / "mix", *args, "--workers", "2")
    assert out.returncode == 1, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(f) for f in good]
    skipped = [line for line in out.stderr.splitlines() if "skipped" in line and ": " in line]
    reasons = ["truncated", "DecompressionBomb", "cannot identify", "cannot identify"]
    for path, why in zip(bad, reasons, strict=True):
        assert sum(str(path) in line and why in line for line in skipped) == 1, out.stderr
    assert "12 images" in out.stderr and "4 unreadable skipped" in out.stderr
    assert "Traceback" not in out.stderr
    # the same objects as the in-memory API gives for the readable files
    model = squeezenet.load_model(shared(NCNN))
    expected, _ = predict(model, good, topk=3, workers=0, progress=False)
    for row, ref in zip(rows, expected, strict=True):
        assert [t["index"] for t in row["top"]] == [t["index"] for t in ref["top"]]
        assert row["top"][0]["prob"] == pytest.approx(ref["top"][0]["prob"], rel=1e-4)

    # bomb.png comes after the 12 good images, in a batch with two of them: those are written
    out = cli("predict", tmp_path / "mix", *args, "--strict", "--batch-size", "5")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "bomb.png: cannot decode image" in out.stderr.strip().splitlines()[-1]
    assert out.stdout.splitlines() == [json.dumps(r) for r in rows]


def test_files_from_stdin_and_a_missing_listed_file(shared, tmp_path):
    good = val_folder(shared, tmp_path / "v", 3)
    listing = "\n".join(map(str, [good[0], tmp_path / "gone.jpg", good[1], "", good[2]])) + "\n"
    out = cli("predict", "--files-from", "-", "--weights", shared(NCNN), "--json",
              "--workers", "0", stdin=listing)  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert [json.loads(line)["file"] for line in out.stdout.splitlines()] == list(map(str, good))
    assert "gone.jpg: no such file" in out.stderr


def test_output_refuses_to_append_to_results_without_resume(shared, tmp_path):
    out_file = tmp_path / "out.jsonl"
    out_file.write_text('{"file": "x.jpg", "top": []}\n')
    out = cli("predict", shared("data/photos/cat.jpg"), "--output", out_file, "--weights", "x")
    assert out.returncode == 2 and "--resume" in out.stderr
    assert out_file.read_text() == '{"file": "x.jpg", "top": []}\n'


def test_a_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"file": "a.jpg", "top": []}\n{"file": "b.jpg", "top": []}\n{"file": "c.j')
    assert completed_files(path) == {"a.jpg", "b.jpg"}
    assert path.read_text().endswith('"b.jpg", "top": []}\n')
    assert completed_files(tmp_path / "none.jsonl") == set()


def test_killed_run_resumed_equals_an_uninterrupted_one(shared, tmp_path):
    files = val_folder(shared, tmp_path / "v", 240)
    args = ["--weights", shared(NCNN), "--batch-size", "8", "--workers", "1", "--no-progress"]
    whole = tmp_path / "whole.jsonl"
    assert cli("predict", tmp_path / "v", "--output", whole, *args).returncode == 0
    expected = whole.read_text().splitlines()
    assert len(expected) == len(files)

    killed = tmp_path / "killed.jsonl"
    command = [sys.executable, "-m", "squeezenet", "predict", str(tmp_path / "v")]
    process = subprocess.Popen([*command, "--output", str(killed), *map(str, args)])
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if killed.exists() and killed.read_bytes().count(b"\n") >= 40:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = killed.read_text().splitlines()
    assert 40 <= len(done) < len(files) and done == expected[: len(done)]
    with killed.open("a") as f:  # what a kill in the middle of a write would leave
        f.write(expected[len(done)][:25])

    out = cli("predict", tmp_path / "v", "--output", killed, "--resume", *args)
    assert out.returncode == 0, out.stderr
    assert killed.read_text().splitlines() == expected  # every image once, same results


def test_shards_together_are_the_unsharded_output(shared, tmp_path, capsys):
    val_folder(shared, tmp_path / "v", 20)
    args = [str(tmp_path / "v"), "--weights", str(shared(NCNN)), "--json", "--workers", "0"]

    def lines(*extra: str) -> list[str]:
        assert main(["predict", *args, *extra]) == 0
        return capsys.readouterr().out.splitlines()

    whole = lines()
    parts = [lines("--shard", f"{i}/3") for i in range(3)]
    assert [len(part) for part in parts] == [7, 7, 6]
    assert sorted(sum(parts, [])) == sorted(whole)


def test_shard_is_a_fixed_partition_of_the_sorted_inputs():
    files = [f"{name}.jpg" for name in "qwertyuiopasdfg"]
    parts = [shard(files, i, 4) for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(files)
    assert parts == [shard(list(reversed(files)), i, 4) for i in range(4)]


def test_default_weights_are_said_or_how_to_get_them(shared, tmp_path, monkeypatch, capsys):
    cat = str(shared("data/photos/cat.jpg"))
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    assert main(["predict", cat, "--topk", "1", "--workers", "0"]) == 0
    out = capsys.readouterr()
    assert f"using {shared(NCNN)}" in out.err
    assert out.out.splitlines()[0] == cat and "(278)" in out.out  # kit fox, as with --weights

    monkeypatch.setenv("SQUEEZENET_SHARED", str(tmp_path / "nothing"))
    assert main(["predict", cat]) == 2
    err = capsys.readouterr().err
    assert "squeezenet download squeezenet1_1" in err and len(err.strip().splitlines()) == 1


def test_the_ray_path_without_ray_names_the_install_command(shared, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(SqueezeNetError, match=r"pip install 'squeezenet\[ray\]'"):
        ray_predict.predict_dataset(None, "x")
    cat, weights = shared("data/photos/cat.jpg"), shared(NCNN)
    assert main(["predict", str(cat), "--weights", str(weights), "--ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'squeezenet[ray]'" in err and len(err.strip().splitlines()) == 1
