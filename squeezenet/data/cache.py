"""Decoded images kept on disk as one memory-mapped uint8 array, so a training epoch costs the
network rather than the JPEG decoder.

A cache holds a file list decoded once, each image at its own size (training keeps whole
photos, validation its center crops): their uint8 RGB pixels one after another in a 1-D
``.npy`` file under ``$SQUEEZENET_HOME/cache``, and each image's (offset, height, width) in an
``.idx.npy`` beside it. Its name is a hash of what determines the pixels (each file's path,
size and modification time, the side and the way of resizing), so a changed file or another
resolution makes a new cache and an unchanged folder reuses the old one, across epochs and
runs; a new cache of changed files replaces theirs, which could never be read again. A JSON file
written last marks it complete and lists unreadable images; its mtime is when a run last found
or built the cache, which ``squeezenet cache`` lists and clears by.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..errors import OutputError, SqueezeNetError
from ..io import atomic_output, atomic_write_bytes
from .datasets import ImageDataset, squeezenet_home
from .transforms import crop_source, load_image

try:
    import fcntl
except ImportError:  # Windows: no flock, but there a file open in another process cannot be
    fcntl = None  # deleted, which keeps a build in progress from the sweeps below

FORMAT = 2  # in every cache's key: 1 held (N, side, side, 3) arrays, which this cannot read
HEADER_BYTES = 128  # a 1-D uint8 .npy header: reserved first, written once the length is known


def cache_dir() -> Path:
    return squeezenet_home() / "cache"


class _Decode(Dataset):
    """Decodes image ``i`` to ``(height, width, 3)`` uint8 with ``pixels``; None when
    unreadable."""

    def __init__(self, files: Sequence[Path], pixels: Callable, draft: int) -> None:
        self.files, self.pixels, self.draft = files, pixels, draft

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, self.pixels(load_image(self.files[i], self.draft))
        except SqueezeNetError:
            return i, None


def _collate(batch):
    return batch


def index_path(data: Path) -> Path:
    """The ``(N, 3)`` (offset, height, width) table beside a cache's pixels."""
    return data.with_suffix(".idx.npy")


class PixelCache:
    """Images ``0..N-1`` of one file list as uint8 arrays (``None`` for unreadable ones).

    The files are mapped lazily in each process, so DataLoader workers share the page cache
    instead of copying the data.
    """

    def __init__(self, path: Path, bad: set[int]) -> None:
        self.path, self.bad = path, bad
        self._flat: np.ndarray | None = None
        self._index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            self._index = np.load(index_path(self.path), mmap_mode="r")
        return self._index

    def pixels(self, i: int) -> np.ndarray | None:
        """Image ``i``'s pixels, a read-only view of the mapped file (None: unreadable)."""
        if i in self.bad:
            return None
        if self._flat is None:
            self._flat = np.load(self.path, mmap_mode="r")
        offset, height, width = (int(v) for v in self.index[i])
        return self._flat[offset : offset + height * width * 3].reshape(height, width, 3)

    def image(self, i: int) -> Image.Image | None:
        pixels = self.pixels(i)
        return None if pixels is None else Image.fromarray(pixels)

    def __getstate__(self) -> dict:  # never pickle the mapped files themselves
        return {**self.__dict__, "_flat": None, "_index": None}


class CachedImages(Dataset):
    """A labelled dataset's images as their cached pixels: ``(pixels, label, index)``, a
    uint8 tensor as the cache holds it, or None for an unreadable image (as ``ImageDataset``)."""

    def __init__(self, base: ImageDataset, cache: PixelCache) -> None:
        self.base, self.cache = base, cache

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        pixels = self.cache.pixels(i)
        return None if pixels is None else (torch.tensor(pixels), self.base.labels[i], i)


def train_pixels(size: int) -> Callable[[Image.Image], np.ndarray]:
    """What training crops of ``size`` are taken from (``crop_source``), as an array."""

    def pixels(image: Image.Image) -> np.ndarray:
        return np.asarray(crop_source(image, size))

    return pixels


def cached_pixels(
    files: Sequence[Path],
    side: int,
    pixels: Callable[[Image.Image], np.ndarray],
    kind: str,
    *,
    draft: int | None = None,
    workers: int = 0,
    progress: bool = True,
) -> PixelCache:
    """The cache of ``files`` decoded by ``pixels``: found or built.

    ``kind`` and ``side`` name the way of decoding (part of the key: "train" images and "val"
    presets at the same side give different pixels); ``draft`` is the JPEG draft size (default
    ``side``).
    """
    paths = [Path(f).resolve() for f in files]
    named = json.dumps([FORMAT, kind, side, *map(str, paths)])
    which = hashlib.sha256(named.encode()).hexdigest()[:8]
    key = hashlib.sha256(which.encode())
    for path in paths:
        st = path.stat() if path.exists() else None
        key.update(f"{st and st.st_size}\0{st and st.st_mtime_ns}\n".encode())
    # the same files at the same side share the prefix; only their sizes and mtimes differ
    prefix = f"{kind}-{side}px-{len(files)}-{which}-"
    base = cache_dir() / f"{prefix}{key.hexdigest()[:16]}"
    done, data = base.with_suffix(".json"), base.with_suffix(".npy")
    if done.is_file() and data.is_file():
        os.utime(done)  # last used: now
        return PixelCache(data, set(json.loads(done.read_text())["unreadable"]))
    cache = _build(files, pixels, draft or side, data, done, workers, progress)
    # caches of these files before they changed, and interrupted builds of them (.tmp)
    for stale in [*cache_dir().glob(f"{prefix}*"), *cache_dir().glob(f".{prefix}*")]:
        if stale not in (data, index_path(data), done) and not being_built(stale):
            remove(stale)
    return cache


class CacheUnavailable(SqueezeNetError):
    """The cache cannot be built here (the disk is full or cannot be written); whoever asked
    for it can go on decoding the images instead."""


def _build(files, pixels, draft, data: Path, done: Path, workers: int, progress: bool):
    """Decode ``files`` into a new cache; CacheUnavailable, leaving nothing, where the disk is
    too small or cannot be written."""
    try:
        return _write_cache(files, pixels, draft, data, done, workers, progress)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CacheUnavailable(
                f"{data.parent}: the disk filled up while the decoded-image cache was built"
            ) from None
        raise CacheUnavailable(
            f"{data.parent}: cannot write the decoded-image cache ({e.strerror or e})"
        ) from None
    except OutputError as e:  # the index or the completion mark: the rest is of no use
        for part in (data.with_name(f".{data.name}.tmp"), data, index_path(data)):
            remove(part)
        raise CacheUnavailable(
            f"{data.parent}: cannot write the decoded-image cache ({e.cause})"
        ) from None


def _write_cache(files, pixels, draft, data: Path, done: Path, workers: int, progress: bool):
    data.parent.mkdir(parents=True, exist_ok=True)
    tmp = data.with_name(f".{data.name}.tmp")
    index = np.zeros((len(files), 3), np.int64)
    with tmp.open("w+b") as out:
        if fcntl:
            fcntl.flock(out, fcntl.LOCK_EX)  # held while building: see ``being_built``
        out.write(bytes(HEADER_BYTES))
        try:
            bad = _decode_into(out, index, files, pixels, draft, workers, progress)
        except BaseException:  # a build cut short is of no use to anyone
            with contextlib.suppress(OSError):  # flushing to a full disk fails, yet it closes
                out.close()  # Windows deletes no open file
            tmp.unlink()
            raise
        length = out.tell() - HEADER_BYTES
        out.seek(0)
        header = {"descr": "|u1", "fortran_order": False, "shape": (length,)}
        np.lib.format.write_array_header_1_0(out, header)
        assert out.tell() == HEADER_BYTES  # numpy pads this header to 128 bytes
        with atomic_output(index_path(data)) as path, path.open("wb") as f:
            np.save(f, index)  # a file object: a path not ending in .npy would get one appended
        if fcntl is None:
            out.close()  # Windows renames no open file (and there is no lock to keep)
        tmp.replace(data)
    atomic_write_bytes(done, json.dumps({"files": len(files), "unreadable": bad}).encode())
    return PixelCache(data, set(bad))


def _check_space(folder: Path, need: float) -> None:
    free = shutil.disk_usage(folder).free
    if free < need:
        raise CacheUnavailable(
            f"{folder}: the decoded-image cache needs about {need / 1e6:,.1f} MB more and the "
            f"disk has {free / 1e6:,.1f} MB free"
        )


def _decode_into(out, index: np.ndarray, files, pixels, draft, workers: int, progress: bool):
    """Decode every file and append its pixels to ``out``, filling ``index``; the indices of
    the unreadable ones. The disk space is checked once the first images tell their size."""
    bad: list[int] = []
    loader = DataLoader(
        _Decode(files, pixels, draft),
        batch_size=32,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers else None,
    )
    bar = tqdm(
        total=len(files),
        desc="decoding into the cache",
        unit="img",
        leave=False,
        disable=not progress,
    )
    with torch.inference_mode():
        for batch in loader:
            bar.update(len(batch))
            for i, image in batch:
                if image is None:
                    bad.append(i)
                    index[i] = out.tell() - HEADER_BYTES, 0, 0
                else:
                    index[i] = out.tell() - HEADER_BYTES, *image.shape[:2]
                    out.write(np.ascontiguousarray(image).data)
            if batch[0][0] == 0:  # the first batch: the rest at its mean size
                mean = (out.tell() - HEADER_BYTES) / len(batch)
                _check_space(Path(out.name).parent, mean * (len(files) - len(batch)))
    bar.close()
    return bad


def being_built(path: Path) -> bool:
    """Whether a run is still building this ``.tmp`` (it holds a lock on it until it ends;
    without ``fcntl`` this cannot tell, and says no)."""
    if fcntl is None:
        return False
    try:
        with path.open("rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except FileNotFoundError:
        pass
    return False


def remove(path: Path) -> bool:
    """Delete ``path`` if it is there and not in use; whether it is gone."""
    try:
        path.unlink(missing_ok=True)
    except PermissionError:  # Windows: open in another process
        return False
    return True


def check_every_class_readable(train: ImageDataset, cache: PixelCache) -> None:
    """A class whose training images are all unreadable is an error naming its folder."""
    unreadable = Counter(train.labels[i] for i in cache.bad)
    for label, count in Counter(train.labels).items():
        if unreadable[label] == count:
            folder = train.files[train.labels.index(label)].parent
            raise SqueezeNetError(f"{folder}: no readable image among its {count} training images")


@dataclass(frozen=True)
class CacheEntry:
    """One cache on disk: its ``.npy`` and ``.json`` (or an interrupted build's ``.tmp``)."""

    name: str
    paths: tuple[Path, ...]
    size: int  # bytes on disk
    last_used: float  # seconds since the epoch
    state: str  # "complete", "being built" (by a running run) or "interrupted"


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:  # a run renamed (.tmp to .npy) or deleted it since the listing
        return None


def _on_disk(st: os.stat_result) -> int:
    """Bytes a file takes on disk: a .tmp is sparse until filled (no block count on Windows)."""
    blocks = getattr(st, "st_blocks", None)
    return st.st_size if blocks is None else blocks * 512


def list_caches() -> list[CacheEntry]:
    """Every cache under ``cache_dir()``, the most recently used first."""
    groups: dict[str, list[Path]] = {}
    for path in cache_dir().glob("*") if cache_dir().is_dir() else []:
        if path.is_file():
            name = path.name.removeprefix(".").split(".")[0]
            groups.setdefault(name, []).append(path)
    entries = []
    for name, paths in groups.items():
        stats = {p: st for p in paths if (st := _stat(p)) is not None}
        if not stats:
            continue
        done = cache_dir() / f"{name}.json"
        if done.is_file() and done.with_suffix(".npy").is_file():
            state = "complete"
        else:
            state = "being built" if any(map(being_built, stats)) else "interrupted"
        on_disk = sum(_on_disk(st) for st in stats.values())
        last_used = max(st.st_mtime for st in stats.values())
        entries.append(CacheEntry(name, tuple(sorted(stats)), on_disk, last_used, state))
    return sorted(entries, key=lambda e: e.last_used, reverse=True)
