"""Atomic file output: write to a temporary file beside the target, then rename over it.

Every file the package writes goes through ``atomic_output`` as plain file writes (libraries'
serializers write into memory first), so an OS error always surfaces here as an ``OSError`` and
leaves as one ``OutputError`` line naming the file and the cause.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError, SqueezeNetError


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path``.

    A crash or interrupt leaves the old file (if any) untouched and no partial file behind.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise SqueezeNetError(f"{path}: folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise output_error(path, e) from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
        except OutputError as e:  # a writer that wrote ``tmp`` through atomic_output itself
            if e.path != tmp:
                raise
            cause = e.cause
            raise OutputError(f"{path}: cannot write: {cause}", str(path), cause, e.errno) from None
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp made it 0600; give it the usual mode
        os.replace(tmp, path)
    except OSError as e:
        raise output_error(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def umask() -> int:
    """The process's umask (reading it means setting it: it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_error(path: str | Path, error: OSError) -> OutputError:
    """``error`` as one line naming ``path`` and the cause (e.g. "No space left on device")."""
    cause = error.strerror or str(error) or type(error).__name__
    return OutputError(f"{path}: cannot write: {cause}", str(path), cause, error.errno)


def writable_dir(path: str | Path) -> Path:
    """``path`` as a folder this process can create files in (made if missing); OutputError
    naming it and the cause otherwise, before any work is done that could not be saved."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise output_error(path, e) from None
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_torch_save(path: str | Path, obj: object) -> None:
    """``torch.save`` through memory: its zip writer reports a full disk as a RuntimeError."""
    import torch  # here: importing this module stays light for commands that never save

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())
