"""Find a weights file: a path, or a registered name looked up in the cache; its SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..data.datasets import squeezenet_home
from ..errors import SqueezeNetError
from .entries import ENTRIES, WeightsEntry


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
