"""The project's own format: safetensors tensors plus a JSON metadata block.

The metadata (stored under the ``squeezenet`` key of the safetensors header) holds the
architecture and its keyword arguments, class names, the preprocessing preset, where the
weights came from and that source's SHA-256, so a file is usable on its own anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file
from safetensors.numpy import save as to_bytes

from ...errors import FormatError
from ...io import atomic_write_bytes
from . import Contents, Hints

META_KEY = "squeezenet"
SUFFIXES = (".safetensors",)


def sniff(head: bytes) -> bool:
    return len(head) > 9 and head[8:9] == b"{"  # a little-endian header size, then JSON


def load(path: Path, hints: Hints) -> Contents:
    """The state dict and the metadata block (empty for files from elsewhere)."""
    state, meta = read(path)
    return Contents(state=state, meta=meta)


def save(path: Path, contents: Contents) -> None:
    write(path, contents.state, contents.meta)


def read(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Return (state dict of arrays, metadata dict); metadata is {} for foreign files."""
    path = Path(path)
    try:
        arrays = load_file(path)
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
    except (SafetensorError, ValueError, OSError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: not a valid safetensors file ({e})") from None
    raw = header.get("__metadata__", {}).get(META_KEY)
    try:
        meta = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        raise FormatError(f"{path}: damaged '{META_KEY}' metadata block") from None
    return arrays, meta


def write(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write atomically (temporary file in the same folder, then rename)."""
    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    data = to_bytes(contiguous, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(path, data)  # bytes first: safetensors' own file writer hides OSError
