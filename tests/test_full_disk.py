"""Writing commands on a file system that fills up, and on a read-only one: one line, exit 2,
and the files that were there before byte-identical.

The file systems are real: a small tmpfs mounted for the test (root only; otherwise the tests
skip saying so), filled to a few kilobytes with a filler file, or remounted read-only.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from squeezenet.cli import main
from squeezenet.data.cache import CacheUnavailable, cached_pixels, train_pixels
from squeezenet.weights.formats import safetensors

NCNN = "weights/ncnn/squeezenet_v1.1.ncnn.param"
OLD = b"the earlier file\n"


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted at ``where`` (a new folder) while in the block."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def full(tmp_path) -> Iterator[Path]:
    """A folder on a 4 MB tmpfs with 16 kB left, holding ``old.bin`` (``OLD``)."""
    where = tmp_path / "full"
    with tmpfs(where, "4m"):
        (where / "old.bin").write_bytes(OLD)
        free = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
        (where / "filler").write_bytes(bytes(free - 16 * 1024))
        yield where


@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    """A folder on a read-only tmpfs holding ``old.bin`` (``OLD``)."""
    where = tmp_path / "ro"
    with tmpfs(where, "1m"):
        (where / "old.bin").write_bytes(OLD)
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where


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
    with tmpfs(where, "64k"):
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


# --- training -------------------------------------------------------------------------------

TRAIN = ["--arch", "squeezenet1_1", "--epochs", "3", "--image-size", "64", "--seed", "1",
         "--workers", "0", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """3 classes x 8 small images (20% held out: 2 steps of 8 per epoch)."""
    from conftest import coloured_shapes

    return coloured_shapes(tmp_path_factory.mktemp("shapes") / "data")


@pytest.fixture(scope="module")
def uninterrupted(shapes, tmp_path_factory) -> Path:
    """The run that never met a full disk."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert main(["train", str(shapes), *TRAIN, "--out", str(out)]) == 0
    return out


def fill_before(monkeypatch, where: Path, name: str, nth: int) -> dict[str, bytes]:
    """Fill ``where`` to the last byte just before the ``nth`` write of ``name`` starts (its
    temporary file is made); returns the folder's files as they were at that moment."""
    real, calls, before = tempfile.mkstemp, [], {}

    def mkstemp(*args, **kwargs):
        if kwargs.get("prefix") == f".{name}." and len(calls) < nth:
            calls.append(1)
            if len(calls) == nth:
                before.update({p.name: p.read_bytes() for p in where.iterdir() if p.is_file()})
                free = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
                with open(where / "filler", "wb") as f:
                    os.posix_fallocate(f.fileno(), 0, free)
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return before


def tensors(path: Path) -> dict[str, np.ndarray]:
    return safetensors.read(path)[0]


@pytest.mark.parametrize("name, nth, saved", [
    ("metrics.jsonl", 2, "state.pt of epoch 1 is intact"),
    ("curves.png", 2, "state.pt of epoch 1 is intact"),
    ("best.safetensors", 1, "nothing saved yet"),  # epoch 1 writes it first
    ("last.safetensors", 2, "state.pt of epoch 1 is intact"),
    ("state.pt", 2, "state.pt of epoch 1 is intact"),
    ("state.pt", 3, "state.pt of epoch 2 is intact"),
    ("confusion.png", 1, "state.pt of epoch 3 is intact"),
])  # fmt: skip
def test_training_on_a_disk_that_fills_up_stops_in_one_line_and_resumes_to_the_same_weights(
    shapes, uninterrupted, tmp_path, capsys, monkeypatch, name, nth, saved
):
    """The disk fills up as one of the run's files is written again: the run ends in one line
    naming it, every file already there is left byte for byte, and once there is room again
    --resume ends with the weights of a run that never met a full disk."""
    where = tmp_path / "small"
    with tmpfs(where, "64m"):
        argv = ["train", str(shapes), *TRAIN, "--out", str(where)]
        before = fill_before(monkeypatch, where, name, nth)
        assert main(argv) == 2
        monkeypatch.undo()
        err = capsys.readouterr().err
        assert before, f"{name} was not written {nth} times"
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err and err.count("error:") == 1, err
        assert last.startswith(f"squeezenet train: error: {where / name}: cannot write: No space")
        if saved == "nothing saved yet":  # no state.pt: the same run again
            assert last.endswith("; nothing saved yet: run it again once there is room"), last
        else:
            assert last.endswith(
                f"; {saved}: 'squeezenet train ... --resume' continues once there is room"
            ), last
        now = {p.name: p.read_bytes() for p in where.iterdir() if p.is_file()}
        assert now.pop("filler") and now == before  # nothing new, nothing changed
        (where / "filler").unlink()
        again = argv if saved == "nothing saved yet" else [*argv, "--resume"]
        assert main(again) == 0, capsys.readouterr().err
        for weights in ("best.safetensors", "last.safetensors"):
            got, want = tensors(where / weights), tensors(uninterrupted / weights)
            assert got.keys() == want.keys()
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"{weights} {k}")
        assert (where / "confusion.png").is_file()


@pytest.mark.parametrize("inside", ["", "run"])
def test_training_into_a_read_only_folder_is_one_line_before_any_work(
    shapes, read_only, capsys, inside
):
    out = read_only / inside
    err = fails_in_one_line(
        capsys, ["train", shapes, *TRAIN, "--out", out], read_only, "Read-only file system"
    )
    assert f"{out}: cannot write" in err and "nothing saved yet" in err, err


# --- the decoded-image cache ----------------------------------------------------------------


def test_training_with_no_room_for_the_image_cache_decodes_instead_and_says_so_once(
    shapes, uninterrupted, tmp_path, capsys, monkeypatch
):
    """SQUEEZENET_HOME on a 64 kB disk: the first images fill it as they are cached. The run
    warns once, naming the cache folder, and trains to the weights of a run that had a cache;
    no part of the cache is left behind."""
    home = tmp_path / "home"
    with tmpfs(home, "64k"):
        monkeypatch.setenv("SQUEEZENET_HOME", str(home))
        out = tmp_path / "run"
        assert main(["train", str(shapes), *TRAIN, "--out", str(out)]) == 0
        err = capsys.readouterr().err
        warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
        cache = [line for line in warnings if "cache" in line]
        assert len(cache) == 1, err
        assert cache[0] == (
            f"warning: {home / 'cache'}: the disk filled up while the decoded-image cache was "
            "built; the run goes on without it, decoding the images every epoch"
        )
        assert not list((home / "cache").iterdir())
        for weights in ("best.safetensors", "last.safetensors"):
            got, want = tensors(out / weights), tensors(uninterrupted / weights)
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"{weights} {k}")


def test_the_image_cache_checks_the_space_for_the_rest_after_its_first_images(
    tmp_path, monkeypatch
):
    """40 images of 3 kB: the first 32 fit on a 112 kB disk, the estimate for the other 8 does
    not; nothing is left behind."""
    from conftest import coloured_shapes

    home = tmp_path / "home"
    with tmpfs(home, "112k"):
        monkeypatch.setenv("SQUEEZENET_HOME", str(home))
        data = coloured_shapes(tmp_path / "data", classes=2, per_class=20, side=32)
        files = sorted(data.rglob("*.png"))
        with pytest.raises(CacheUnavailable) as error:
            cached_pixels(files, 32, train_pixels(32), "train", progress=False)
        assert str(error.value).startswith(
            f"{home / 'cache'}: the decoded-image cache needs about 0.0 MB more"
        )
        assert not list((home / "cache").iterdir())
        cache = cached_pixels(files[:32], 32, train_pixels(32), "train", progress=False)
        assert cache.pixels(31).shape == (32, 32, 3)  # 32 of them fit
