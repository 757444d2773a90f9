"""One shape for every command: default weights said on stderr, --no-progress wherever a bar is
drawn, defaults in --help; the documented outputs of predict and evaluate; and a --help that
starts without importing torch."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys

import pytest
from PIL import Image
from test_cli_parser_walk import Reached, commands, options, outcome

import squeezenet
from squeezenet.cli import main
from squeezenet.weights.entries import ENTRIES

# every command that loads weights to run them, and the least it needs besides
DEFAULT_WEIGHTS = {
    "predict": ["IMAGE"],
    "evaluate": ["DATA"],
    "bench": [],
    "compress": ["-o", "OUT/x.sqz"],
    "quantize": ["--calibration", "DATA", "-o", "OUT/x.onnx"],
    "export": ["-o", "OUT/x.onnx"],
    "serve": [],
    "hub save": ["-o", "OUT/folder"],
}
BARS = {"predict", "evaluate", "bench", "compress", "quantize", "train", "compare", "demo"}
BARS |= {"hub save"}
HEAVY = ["torch", "numpy", "onnx", "onnxruntime", "matplotlib", "PIL", "tqdm", "ml_dtypes"]


def test_every_command_has_the_same_shape():
    parsers = commands()
    assert set(DEFAULT_WEIGHTS) | BARS <= set(parsers)
    for name, parser in parsers.items():
        actions = {a.dest: a for a in options(parser)}
        if name in DEFAULT_WEIGHTS:
            weights = actions["weights"]
            assert not weights.required and "default: pretrained weights" in weights.help, name
        assert ("no_progress" in actions) == (name in BARS), name
        formatter = parser._get_formatter()
        for action in actions.values():
            if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
                continue
            shown = formatter._expand_help(action) if action.help else ""
            assert "default" in shown, f"{name} {action.option_strings[-1]}: no default in help"
    assert "weights" not in {a.dest for a in options(parsers["convert"])}  # SRC is the weights


@pytest.fixture
def work_stops(monkeypatch):
    from test_cli_parser_walk import WORK

    def reached(*args, **kwargs):
        raise Reached

    for module, name in WORK:
        monkeypatch.setattr(f"{module}.{name}", reached)


@pytest.fixture
def small(tmp_path):
    """A random 4-class v1.1 and a labelled folder of one image per class."""
    weights = tmp_path / "four.safetensors"
    squeezenet.save_model(squeezenet.create_model("squeezenet1_1", num_classes=4), weights)
    data = tmp_path / "data"
    for i, label in enumerate("abcd"):
        (data / label).mkdir(parents=True)
        Image.new("RGB", (80, 60), (60 * i, 40, 200 - 40 * i)).save(data / label / "1.jpg")
    return {"weights": weights, "data": data, "image": data / "a" / "1.jpg"}


@pytest.mark.parametrize("command", sorted(DEFAULT_WEIGHTS))
def test_default_weights_are_said_in_one_line(
    command, small, tmp_path, monkeypatch, work_stops, capsys
):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SQUEEZENET_HOME", str(home))
    monkeypatch.setenv("SQUEEZENET_SHARED", str(tmp_path / "no-shared"))
    fill = {"IMAGE": str(small["image"]), "DATA": str(small["data"])}
    line = command.split() + [
        fill.get(a, a.replace("OUT", str(tmp_path))) for a in DEFAULT_WEIGHTS[command]
    ]
    result, err = outcome(line, capsys)
    assert result == "exit 2" and len(err.strip().splitlines()) == 1, err
    assert "no --weights given" in err and "squeezenet download" in err

    cached = home / ENTRIES["squeezenet1_1.torchvision"].filename
    squeezenet.save_model(squeezenet.load_model(small["weights"]), cached)
    result, err = outcome(line, capsys)
    assert result == "reached", err
    assert err == f"squeezenet {command}: using {cached} (choose with --weights)\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("no_progress", [False, True])
def test_predict_closing_line_when_the_bar_is_shown(small, monkeypatch, capsys, no_progress):
    """docs/predict.md: a bar on a terminal and a closing line; --no-progress: neither."""
    stderr = Terminal()
    monkeypatch.setattr(sys, "stderr", stderr)
    line = ["predict", str(small["image"]), "--weights", str(small["weights"]), "--workers", "0",
            "--backend", "eager"] + (["--no-progress"] if no_progress else [])  # fmt: skip
    assert main(line) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(small["image"])
    closing = re.findall(r"squeezenet predict: 1 images in [\d.]+ s \([\d.]+ images/s\), 0 "
                         r"unreadable skipped", stderr.getvalue())  # fmt: skip
    assert len(closing) == (0 if no_progress else 1), stderr.getvalue()
    assert ("img/s" in stderr.getvalue()) is not no_progress  # the bar itself


def test_evaluate_json_keys_with_fewer_than_five_classes(small, capsys):
    """top5 is top-k for k = min(5, classes): every image is within the top 4 of 4 classes."""
    line = ["evaluate", str(small["data"]), "--weights", str(small["weights"]), "--json",
            "--workers", "0", "--backend", "eager"]  # fmt: skip
    assert main(line) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"top1", "top5", "n", "skipped"}
    assert (result["top5"], result["n"], result["skipped"]) == (1.0, 4, 0)
    assert result["top1"] in (0, 0.25, 0.5, 0.75, 1.0)


def test_help_imports_no_heavy_module():
    """``squeezenet --help`` builds every command's parser without torch, onnx and the rest."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['squeezenet', '--help']\n"
        "try:\n"
        "    runpy.run_module('squeezenet', run_name='__main__')\n"  # python -m squeezenet
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('\\n'.join(sys.modules), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "predict" in out.stdout, out.stderr[-2000:]
    imported = set(out.stderr.split())
    assert {"squeezenet.cli.predict", "squeezenet.cli.train", "squeezenet.cli.serve"} <= imported
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
