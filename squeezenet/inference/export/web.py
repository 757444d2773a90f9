"""The browser target: a static folder whose page classifies photos with onnxruntime-web.

The folder holds ``index.html`` and its scripts (``web_page/``), ``model.onnx`` (fp32, or int8
calibrated with ``quantize``), ``model.json`` (the weights' classes and preprocessing) and the
WASM build of onnxruntime-web copied from ``node_modules`` (``npm ci`` at the repository root,
pinned in ``package.json``). Nothing is loaded from outside the folder and nothing is sent:
the photo is decoded, preprocessed (``squeezenet.js``, the same arithmetic as
``data/transforms.py``) and classified in the page. Any static file server can host it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from ...errors import SqueezeNetError
from ...io import umask
from ...weights.formats.onnx import metadata
from ...weights.info import WeightsInfo
from .onnx import INPUT, OUTPUT, onnx_model

SUFFIXES: tuple[str, ...] = ()  # it writes a folder, not a file
PAGE = Path(__file__).with_name("web_page")
PAGE_FILES = ("index.html", "app.js", "bars.js", "squeezenet.js", "style.css")
# the page files ``squeezenet serve``'s page loads from /web/ too: one copy of each for both pages
SHARED_FILES = ("bars.js", "squeezenet.js", "style.css")
ORT_VERSION = "1.30.0"  # as package.json pins it
# the page's onnxruntime-web: the WASM-only script, the Emscripten loader it imports and the
# binary that loader fetches (threaded build; run with one thread, no cross-origin isolation)
RUNTIME = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MODEL, INFO = "model.onnx", "model.json"
NODE_MODULES = Path(__file__).resolve().parents[3] / "node_modules"


def runtime_files(node_modules: Path | None = None) -> dict[str, Path]:
    """onnxruntime-web's files the page loads, by name; a one-line error when not installed."""
    dist = (node_modules or NODE_MODULES) / "onnxruntime-web" / "dist"
    files = {name: dist / name for name in RUNTIME}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise SqueezeNetError(
            f"{dist}: onnxruntime-web {ORT_VERSION} is not installed ({missing[0]} missing); "
            "run 'make install' or 'npm ci' in the repository"
        )
    installed = json.loads((dist.parent / "package.json").read_text(encoding="utf-8"))["version"]
    if installed != ORT_VERSION:
        raise SqueezeNetError(
            f"{dist.parent}: onnxruntime-web {installed} is installed, the page is made for "
            f"{ORT_VERSION}; run 'make install' or 'npm ci' in the repository"
        )
    return files


def model_json(info: WeightsInfo, quantization: str | None = None) -> dict:
    """What the page reads: the weights' metadata (classes, preprocessing) and the graph's names."""
    return {
        **info.to_meta(),
        "model": MODEL,
        "input": INPUT,
        "output": OUTPUT,
        "int8": quantization is not None,
        "quantization": quantization,
        "onnxruntime_web": ORT_VERSION,
    }


def model_bytes(
    model: nn.Module, int8: bool, calibration: str | Path | None
) -> tuple[bytes, str | None]:
    """The ONNX graph as bytes, int8 when asked, and its quantization note.

    fp32 as ``export --format onnx`` writes it (batch 1); int8 as ``quantize`` does (any batch:
    calibration runs batches of 10).
    """
    proto = onnx_model(model, dynamic_batch=int8)
    if not int8:
        return proto.SerializeToString(), None
    from ..quantize import calibration_images, quantize_onnx  # onnxruntime.quantization: slow

    images = calibration_images(calibration, model.weights_info.preprocess)
    quantized = quantize_onnx(proto, images.numpy())
    return quantized.SerializeToString(), metadata(quantized)["quantization"]


def write(
    model: nn.Module, path: Path, *, int8: bool = False, calibration: str | Path | None = None
) -> None:
    """Write the page's folder at ``path`` (replacing an earlier export there).

    ``int8`` quantizes with ``calibration``, a folder of training images (e.g.
    ``imagenet-sample``), never the images the folder is evaluated on.
    """
    runtime = runtime_files()  # before the long work
    if int8 and calibration is None:
        raise SqueezeNetError(
            "int8 needs calibration images: --calibration DIR (training images such as "
            "imagenet-sample, never those you evaluate on)"
        )
    if path.exists() and not (path / INFO).is_file():
        raise SqueezeNetError(f"{path}: exists and is not a web export; choose a new folder")
    graph, quantization = model_bytes(model, int8, calibration)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        for name in PAGE_FILES:
            shutil.copyfile(PAGE / name, tmp / name)
        for name, source in runtime.items():
            shutil.copyfile(source, tmp / name)
        (tmp / MODEL).write_bytes(graph)
        info = model_json(model.weights_info, quantization)
        (tmp / INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp made it 0700: a server must read it
        _replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(new: Path, path: Path) -> None:
    """Move the finished folder ``new`` to ``path``; an earlier export there goes only after."""
    if not path.exists():
        os.replace(new, path)
        return
    old = new.with_name(new.name + ".old")
    os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)
