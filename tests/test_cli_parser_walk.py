"""Every command's parser, walked: each numeric option given 0, -1 and 10**9, each path option a
missing file, a folder and a file of the wrong kind. Every run ends in one line on stderr and
exit 2, or succeeds; never a traceback.

"Succeeds" means the command got as far as its real work: the functions that start it (export,
training, the backends...) are replaced by one that raises ``Reached``, so that a valid value
costs no more than loading a small model.
"""

from __future__ import annotations

import argparse
import re
import signal
from pathlib import Path

import pytest
from PIL import Image

import squeezenet
from squeezenet.cli import build_parser, main

# where each command's real work starts: reaching one of these means every check passed
WORK = [
    ("squeezenet.inference.backends", "optimize"),  # predict, evaluate
    ("squeezenet.inference.bench", "bench"),
    ("squeezenet.compress.pipeline", "compress"),
    ("squeezenet.inference.quantize", "quantize"),
    ("squeezenet.inference.export", "export"),
    ("squeezenet.weights.load", "save_model"),  # convert
    ("squeezenet.serve.app", "create_app"),
    ("squeezenet.engine.train", "train"),
    ("squeezenet.engine.compare", "compare"),
    ("squeezenet.models.stats", "model_stats"),  # info
    ("squeezenet.inference.hub", "save_folder"),
]
PATH_METAVAR = re.compile(r"PATH|^FILE|LIST|^OUT|\.npy|DIR|DATA|IMAGE|PNG|SRC")
FOLDER_METAVAR = re.compile(r"DIR$|^DATA$")
OUTPUT_METAVAR = re.compile(r"^OUT|\.npy$|^PNG$|^FILE\.onnx$|^RUN_DIR$")
NUMBERS = ["0", "-1", str(10**9)]
SECONDS = 120  # per run, the first one importing torch and onnx on a busy machine


class Reached(Exception):
    """Raised where a command's real work would start."""


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = {}
    for name, command in subcommands(parser).items():  # one level deeper: hub save, hub push
        found |= {f"{name} {n}": p for n, p in subcommands(command).items()} or {name: command}
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(found[0].choices) if found else {}


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def is_numeric(action: argparse.Action) -> bool:
    return action.type in (int, float) or hasattr(action.type, "range")


def is_path(action: argparse.Action) -> bool:
    return bool(PATH_METAVAR.search(action.metavar or action.dest.upper()))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A small real model, images, a labelled folder, and files of the wrong kinds."""
    root = tmp_path_factory.mktemp("walk")
    weights = root / "w.safetensors"
    squeezenet.save_model(squeezenet.create_model("squeezenet1_1", num_classes=2), weights)
    data = root / "data"
    for label, color in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        (data / label).mkdir(parents=True)
        Image.new("RGB", (64, 48), color).save(data / label / "1.jpg")
    (root / "notes.txt").write_text("not weights, not an image\n")
    Image.new("RGB", (8, 8)).save(root / "photo.jpg")
    (root / "empty").mkdir()
    return {"root": root, "weights": weights, "data": data, "image": data / "a" / "1.jpg"}


def base_args(command: str, files: dict[str, Path], out: Path) -> dict[str, str | None]:
    """Valid, cheap values for what each command needs (by dest)."""
    weights, data = str(files["weights"]), str(files["data"])
    return {
        "predict": {"images": str(files["image"]), "weights": weights, "workers": "0"},
        "evaluate": {"data": data, "weights": weights, "workers": "0"},
        "bench": {"weights": weights},
        "compress": {"weights": weights, "output": str(out / "x.sqz")},
        "quantize": {"weights": weights, "calibration": data, "output": str(out / "x.onnx")},
        "export": {"weights": weights, "output": str(out / "x.onnx")},
        "convert": {"src": weights, "output": str(out / "x.safetensors")},
        "serve": {"weights": weights},
        "train": {"data": data, "out": str(out / "run")},
        "compare": {"data": data, "out": str(out / "runs")},
        "info": {"arch": "squeezenet1_1"},
        "demo": {"shared": str(files["root"] / "empty")},
        "hub save": {"weights": weights, "output": str(out / "folder")},
        "hub push": {"folder": str(files["root"]), "repo": "someone/model"},
    }.get(command, {})


def argv(command: str, parser: argparse.ArgumentParser, values: dict[str, str | None]) -> list:
    """The command line giving each dest its value (positionals in the parser's order)."""
    line = command.split()
    for action in options(parser):
        value = values.get(action.dest)
        if value is None:
            continue
        if action.option_strings:
            line += [action.option_strings[-1], value]
        else:
            line.append(value)
    return line


def wrong_kinds(action: argparse.Action, files: dict[str, Path]) -> dict[str, str]:
    """A missing path, a folder and a file of the wrong kind for this path option."""
    root, metavar = files["root"], action.metavar or action.dest.upper()
    if FOLDER_METAVAR.search(metavar):
        wrong = root / "photo.jpg"  # a file where a folder is wanted
    elif OUTPUT_METAVAR.search(metavar):
        wrong = root / "notes.txt"  # an existing file of another kind where one is written
    elif "IMAGE" in metavar:
        wrong = root / "notes.txt"
    else:
        wrong = root / ("photo.jpg" if metavar in ("FILE", "LIST") else "notes.txt")
    return {"missing": str(root / "nowhere" / "x.bin"), "folder": str(root), "wrong": str(wrong)}


@pytest.fixture
def no_work(monkeypatch):
    def reached(*args, **kwargs):
        raise Reached

    for module, name in WORK:
        monkeypatch.setattr(f"{module}.{name}", reached)


def outcome(line: list[str], capsys) -> tuple[str, str]:
    """``("reached" | "exit N", stderr)`` of one in-process run under a watchdog."""

    def stuck(*_):
        raise TimeoutError(f"{' '.join(line)} ran over {SECONDS} s")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(SECONDS)
    try:
        result = f"exit {main(line)}"
    except SystemExit as e:
        result = f"exit {e.code}"
    except Reached:
        result = "reached"
    except Exception as e:  # a traceback for a user: reported with the others
        result = f"traceback {type(e).__name__}: {e}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return result, capsys.readouterr().err


def judge(line: list[str], result: str, err: str) -> str | None:
    """What is wrong with a run's ending, or None: one stderr line and exit 2, or success."""
    if result in ("reached", "exit 0"):
        return None
    lines = err.strip().splitlines()
    if result == "exit 2" and len(lines) == 1:
        return None
    return f"{' '.join(line)}: {result}, stderr {err.strip()[-300:]!r}"


def test_every_numeric_option_uses_a_range_checked_type():
    unchecked = [
        f"{name} {action.option_strings[-1]}"
        for name, parser in commands().items()
        for action in options(parser)
        if action.type in (int, float) and action.choices is None
    ]
    assert not unchecked, "use a range type from cli/common.py: " + ", ".join(unchecked)


@pytest.mark.parametrize("command", sorted(commands()))
def test_numbers_and_paths_end_in_one_line_or_succeed(command, files, tmp_path, no_work, capsys):
    parser = commands()[command]
    base = base_args(command, files, tmp_path)
    wrong = []
    for action in options(parser):
        if is_numeric(action) and action.choices is None:
            tries = {value: value for value in NUMBERS}
        elif is_path(action):
            tries = wrong_kinds(action, files)
        else:
            continue
        for kind, value in tries.items():
            line = argv(command, parser, {**base, action.dest: value})
            result, err = outcome(line, capsys)
            if problem := judge(line, result, err):
                wrong.append(f"[{kind}] {problem}")
    assert not wrong, "\n".join(wrong)


def test_a_range_is_refused_at_parse_time_in_one_line(files, capsys):
    """The known failures: each is refused by the parser before anything is loaded."""
    image, weights = str(files["image"]), str(files["weights"])
    for line, message in [
        (["predict", image, "--batch-size", "0"], "--batch-size: expected an integer in 1..1024"),
        (["predict", image, "--workers", "-1"], "--workers: expected an integer in 0..64"),
        (["quantize", "--num-images", "0", "-o", "x.onnx"], "--num-images: expected an integer"),
        (["predict", image, "--topk", "0"], "--topk: expected an integer >= 1"),
        (["serve", "--port", "70000"], "--port: expected an integer in 1..65535"),
        (["train", str(files["data"]), "--out", "r", "--lr", "nan"], "--lr: expected a number > 0"),
        (["info", "squeezenet1_1", "--image-size", "8"], "8x8 is too small for squeezenet1_1"),
        (["predict", image, "--weights", weights, "--topk", "3"], "--topk 3: the model has 2"),
    ]:
        result, err = outcome(line, capsys)
        assert result == "exit 2" and len(err.strip().splitlines()) == 1, (line, err)
        assert message in err, (line, err)


def test_train_refuses_an_image_size_below_the_arch_minimum(files, tmp_path, no_work, capsys):
    """Checked against the architecture the run would train, before any training."""
    data, weights = str(files["data"]), str(files["weights"])
    for extra, arch, smallest in [
        ([], "squeezenet1_1", 17),
        (["--arch", "alexnet"], "alexnet", 63),
        (["--weights", weights], "squeezenet1_1", 17),  # the weights' arch
    ]:
        line = ["train", data, "--out", str(tmp_path / "r"), "--image-size", "16", *extra]
        result, err = outcome(line, capsys)
        assert result == "exit 2", (line, err)
        assert f"16x16 is too small for {arch} (at least {smallest})" in err
    line = ["train", data, "--out", str(tmp_path / "r"), "--image-size", "17"]
    assert outcome(line, capsys)[0] == "reached"
