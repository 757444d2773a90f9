"""Writing commands on a file system that fills up, and on a read-only one: one line, exit 2,
and the files that were there before byte-identical.

The file systems are real: a small tmpfs mounted for the test (root only; otherwise the tests
skip saying so), filled to a few kilobytes with a filler file, or remounted read-only.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from squeezenet.cli import main

NCNN = "weights/ncnn/squeezenet_v1.1.ncnn.param"
OLD = b"the earlier file\n"


def mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def full(tmp_path) -> Iterator[Path]:
    """A folder on a 4 MB tmpfs with 16 kB left, holding ``old.bin`` (``OLD``)."""
    where = tmp_path / "full"
    mount_tmpfs(where, "4m")
    try:
        (where / "old.bin").write_bytes(OLD)
        free = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
        (where / "filler").write_bytes(bytes(free - 16 * 1024))
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    """A folder on a read-only tmpfs holding ``old.bin`` (``OLD``)."""
    where = tmp_path / "ro"
    mount_tmpfs(where, "1m")
    try:
        (where / "old.bin").write_bytes(OLD)
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fails_in_one_line(capsys, argv: list[str], where: Path, cause: str) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert cause in err and str(where) in err, err
    assert (where / "old.bin").read_bytes() == OLD
    assert not [p.name for p in where.iterdir() if p.name.endswith(".tmp")]
    return err


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".caffemodel"])
def test_convert_on_a_full_disk_is_one_line_and_keeps_the_old_file(shared, full, capsys, suffix):
    target = full / f"v11{suffix}"
    err = fails_in_one_line(
        capsys, ["convert", shared(NCNN), "-o", target], full, "No space left on device"
    )
    assert str(target) in err
    assert not target.exists()


def test_convert_over_an_earlier_file_on_a_full_disk_leaves_it_as_it_was(shared, full, capsys):
    target = full / "old.bin"
    err = fails_in_one_line(
        capsys, ["convert", shared(NCNN), "-o", full / "new.safetensors"], full, "No space"
    )
    assert "new.safetensors" in err and target.read_bytes() == OLD


def test_export_on_a_full_disk_is_one_line(shared, full, capsys):
    fails_in_one_line(
        capsys, ["export", "--weights", shared(NCNN), "-o", full / "v11.onnx"], full, "No space"
    )


@pytest.mark.parametrize("argv", [
    ["convert", NCNN, "-o", "{}/v11.safetensors"],
    ["export", "--weights", NCNN, "-o", "{}/v11.onnx"],
    ["predict", "data/photos/cat.jpg", "--weights", NCNN, "--json", "--output", "{}/out.jsonl"],
])  # fmt: skip
def test_writing_into_a_read_only_folder_is_one_line(shared, read_only, capsys, argv):
    argv = [str(shared(a)) if a in (NCNN, "data/photos/cat.jpg") else a for a in argv]
    argv = [a.format(read_only) for a in argv]
    fails_in_one_line(capsys, argv, read_only, "Read-only file system")


def test_predict_output_on_a_full_disk_keeps_its_lines_and_resumes(shared, tmp_path, capsys):
    """The output fills the disk part-way; after room is made, --resume gives each image once."""
    where = tmp_path / "small"
    mount_tmpfs(where, "64k")
    try:
        photos = sorted(shared("data/photos").iterdir())
        out = where / "out.jsonl"
        free = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
        (where / "filler").write_bytes(bytes(free - 4096))  # room for a few lines only
        argv = ["predict", *photos, "--weights", shared(NCNN), "--json", "--output", out,
                "--batch-size", "1", "--topk", "50", "--no-progress"]  # fmt: skip
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "No space left on device" in err, err
        assert "--resume" in err
        kept = out.read_bytes()
        assert 0 < len(kept) and kept.count(b"\n") < len(photos)
        (where / "filler").unlink()
        assert main([str(a) for a in [*argv, "--resume"]]) == 0
        files = [json.loads(line)["file"] for line in out.read_text().splitlines()]
        assert sorted(files) == sorted(map(str, photos))
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
