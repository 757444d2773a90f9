"""A ``torch.export`` program (.pt2, from ``torch.export.save``), run as it is.

``squeezenet export --format pt2`` stores ``weights_info.to_meta()`` in the archive as the extra
file ``squeezenet.json``; other .pt2 files get the arch ``pt2``, torchvision preprocessing and as
many classes as the program's output has columns. Loading gives an ``ExportedModel``, not
weights for a model built here: the program is what runs.

``torch.export.load`` unpickles what an archive marks as pickled (tensor subclasses, custom
objects, sample inputs it cannot read as plain tensors), so the archive is checked first: only
raw tensor payloads and plain sample inputs pass.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ...errors import FormatError
from . import Contents, Hints
from .sqz import _check_meta

SUFFIXES = (".pt2",)
META_FILE = "squeezenet.json"
MODEL = "model"  # the name torch.export.save gives the one program it stores
PREFIXES = {"weights": "weight_", "constants": "tensor_"}  # raw tensors, never pickles


class ExportedModel(nn.Module):
    """A ``torch.export`` program as a module mapping a float32 NCHW batch to logits.

    The program's graph module refuses ``eval()``, so it is kept outside the module tree:
    ``eval()``, ``to()`` and ``state_dict()`` see no children. It was exported in eval mode.
    """

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.program = program
        object.__setattr__(self, "_run", program.module())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)


def sniff(head: bytes) -> bool:
    return False  # a zip whose first member varies: the suffix decides


def load(path: Path, hints: Hints) -> Contents:
    program, meta = read(path)
    if meta is None:
        outputs = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
        shape = getattr(outputs[0], "meta", {}).get("val", torch.empty(0)).shape
        meta = {"arch": "pt2", "num_classes": int(shape[-1]) if shape else 0}
    return Contents(module=ExportedModel(program), meta=meta)


def read(path: str | Path) -> tuple[torch.export.ExportedProgram, dict | None]:
    """The program and its ``squeezenet.json`` (None in files from elsewhere)."""
    meta = _check_archive(path)
    try:
        with quiet_logger("torch.export"):
            program = torch.export.load(str(path))
    except Exception as e:  # the deserializer raises many kinds on damaged archives
        kind = type(e).__name__
        raise FormatError(f"{path}: not a loadable torch.export program ({kind})") from None
    if not isinstance(program, torch.export.ExportedProgram):
        raise FormatError(f"{path}: not a torch.export program")
    return program, meta


def _check_archive(path: str | Path) -> dict | None:
    """The archive's metadata, after refusing anything that would be unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            ends = [n for n in names if n.endswith("archive_format")]
            root = ends[0][: -len("archive_format")] if ends else None
            if root is None or f"{root}models/{MODEL}.json" not in names:
                raise FormatError(f"{path}: not a torch.export archive (no {MODEL} program)")
            damaged = archive.testzip()  # CRCs: torch's reader would take flipped weights
            if damaged:
                raise FormatError(f"{path}: damaged archive member {damaged}")
            for kind in ("weights", "constants"):
                config = f"{root}data/{kind}/{MODEL}_{kind}_config.json"
                if config not in names:
                    raise FormatError(f"{path}: no {kind} table (an old or damaged archive)")
                _check_payloads(path, kind, json.loads(archive.read(config)))
            sample = f"{root}data/sample_inputs/{MODEL}.pt"
            if sample in names and archive.getinfo(sample).file_size:
                torch.load(io.BytesIO(archive.read(sample)), weights_only=True)
            extra = f"{root}extra/{META_FILE}"
            meta = json.loads(archive.read(extra)) if extra in names else None
    except FormatError:
        raise
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except Exception as e:  # zipfile, json and torch.load raise many kinds on damaged bytes
        raise FormatError(f"{path}: not a readable .pt2 archive ({type(e).__name__})") from None
    try:
        return None if meta is None else _check_meta(meta)
    except FormatError as e:
        raise FormatError(f"{path}: {META_FILE}: {e}") from None


def _check_payloads(path: str | Path, kind: str, table: dict) -> None:
    """Every tensor stored raw: a pickled payload or custom object would run code on load."""
    entries = table.get("config") if isinstance(table, dict) else None
    if not isinstance(entries, dict):
        raise FormatError(f"{path}: damaged {kind} table")
    for name, entry in entries.items():
        raw = isinstance(entry, dict) and entry.get("use_pickle") is False
        if not raw or not str(entry.get("path_name", "")).startswith(PREFIXES[kind]):
            raise FormatError(f"{path}: {kind} {name!r} is not a plain tensor (refused: pickled)")


@contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Silence logger ``name`` and its children: ``torch.export.load`` logs a traceback before
    raising on a damaged archive, the ONNX exporter each torchvision op it cannot register."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)  # its child loggers inherit the level
    try:
        yield
    finally:
        logger.setLevel(level)
