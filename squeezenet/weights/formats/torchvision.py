"""torchvision ``.pth`` state dicts (``features.N...``, ``classifier.1...``), loaded safely."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import FormatError
from ...io import atomic_torch_save
from . import Contents, Hints

SUFFIXES = (".pth", ".pt")


def sniff(head: bytes) -> bool:
    """A pickle, or a ``torch.save`` zip (its first member is ``<archive>/data.pkl``)."""
    if head[:1] == b"\x80":
        return True
    name_length = int.from_bytes(head[26:28], "little")
    return head[:4] == b"PK\x03\x04" and head[30 : 30 + name_length].endswith(b"data.pkl")


def load(path: Path, hints: Hints) -> Contents:
    """The state dict; the arch is inferred from its keys and shapes."""
    return Contents(state=read(path), meta={"preprocess": "torchvision"})


def save(path: Path, contents: Contents) -> None:
    write(path, contents.state)


def read(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``torch.save``d state dict (weights only, no code execution) as arrays."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler raises many types
        # (UnpicklingError, RuntimeError, IndexError, struct.error, ...) on damaged files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"{path}: not a readable PyTorch state dict ({reason})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FormatError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return {k.removeprefix("module."): v.numpy() for k, v in obj.items()}


def write(path: str | Path, state: dict[str, np.ndarray]) -> None:
    """Write a state dict that ``torch.load`` (and torchvision) reads, atomically."""
    atomic_torch_save(path, {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
