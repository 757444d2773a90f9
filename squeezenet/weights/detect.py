"""Locate a weights file (a path or a cached name) and tell its format (magic bytes, suffix)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from ..data.datasets import squeezenet_home
from ..errors import FormatError, SqueezeNetError
from .entries import ENTRIES, WeightsEntry

FORMATS = (
    "safetensors",
    "torchvision",
    "deep_compression",
    "ncnn",
    "caffe",
    "chainer",
    "onnx",
    "sqz",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(spec: str | Path) -> tuple[Path, WeightsEntry | None]:
    """A path, or a registered name looked up in the cache ($SQUEEZENET_HOME)."""
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            raise SqueezeNetError(f"{path}: is a folder; pass a weights file")
        return path, None
    if str(spec) in ENTRIES:
        entry = ENTRIES[str(spec)]
        cached = squeezenet_home() / entry.filename
        if not cached.exists():
            raise SqueezeNetError(
                f"weights {entry.name!r} are not in the cache {cached.parent}: run "
                f"'squeezenet download {entry.name}' (from {entry.url}) or pass --weights PATH"
            )
        return cached, entry
    raise SqueezeNetError(
        f"{spec}: no such file, and not a known weights name ({', '.join(sorted(ENTRIES))})"
    )


def detect_format(path: Path) -> str:
    """Guess the format from magic bytes and the file name."""
    with open(path, "rb") as f:
        head = f.read(16)
    suffix = path.suffix.lower()
    if head[:4] == b"SQZ\x00" or suffix == ".sqz":
        return "sqz"
    if suffix == ".safetensors" or (len(head) > 9 and head[8:9] == b"{"):
        return "safetensors"
    if suffix == ".param" or head.startswith(b"7767517"):
        return "ncnn"
    if suffix == ".net":
        return "deep_compression"
    if suffix == ".caffemodel":
        return "caffe"
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".npz":
        return "chainer"
    if head[:1] == b"\x80" or suffix in (".pth", ".pt"):
        return "torchvision"
    if head[:2] == b"PK":  # a zip: torch.save (has data.pkl) or an npz
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            raise FormatError(f"{path}: damaged zip archive") from None
        return "torchvision" if any(n.endswith("data.pkl") for n in names) else "chainer"
    raise FormatError(
        f"{path}: cannot tell the weights format from its name or first bytes; "
        f"pass --format ({', '.join(FORMATS)})"
    )
