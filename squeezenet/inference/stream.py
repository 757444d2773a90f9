"""Predict over any number of images as a stream: results come out batch by batch, in input order.

Built for long runs over photo libraries: an image that cannot be decoded is reported and
skipped, results are appended to a JSON-lines file that a killed run can ``resume`` from, and
``shard`` splits the inputs between machines deterministically.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import ImageDataset, list_images
from ..data.transforms import load_image
from ..errors import OutputError, SqueezeNetError
from ..io import output_error
from .pipeline import Forward, batch_logits, top_classes


@dataclass
class Batch:
    """One batch of the stream: results in input order, their logits, and the files skipped."""

    results: list[dict]  # {"file", "top": [{"index", "label", "prob"}]}, as ``predict`` gives
    logits: np.ndarray  # (len(results), classes) float32
    failures: list[tuple[str, str]]  # (file, why it could not be read)
    files: list[str]  # every input of the batch, in order

    def until_first_failure(self) -> Batch:
        """The results of the files before the first failure, which ``--strict`` still writes."""
        before = self.files[: self.files.index(self.failures[0][0])]
        keep = set(before)
        rows = [i for i, r in enumerate(self.results) if r["file"] in keep]
        return Batch([self.results[i] for i in rows], self.logits[rows], [], before)


def predict_stream(
    model: torch.nn.Module,
    files: Sequence[str | Path],
    *,
    topk: int = 5,
    forward: Forward | None = None,
    batch_size: int = 32,
    workers: int | None = None,
) -> Iterator[Batch]:
    """Top-k classes of ``files``, one ``Batch`` at a time as the network finishes each.

    Images are decoded in ``workers`` processes while the network runs; one that cannot be
    decoded is named in ``Batch.failures`` with the decoder's reason instead of stopping the run.
    """
    info = model.weights_info
    preprocess = info.preprocess
    files = [str(f) for f in files]
    # workers send uint8 pixels; each batch is normalised once here, as evaluate does
    dataset = ImageDataset(files, None, preprocess.pixels, draft_size=preprocess.resize)
    batches = batch_logits(
        forward or model,
        dataset,
        normalize=preprocess.normalize,
        batch_size=batch_size,
        workers=workers,
    )
    for start, stop, index, logits in batches:
        if logits is None:
            logits = np.zeros((0, info.num_classes), np.float32)
        missing = sorted(set(range(start, stop)) - set(index.tolist()))
        yield Batch(
            [
                {"file": files[i], "top": top_classes(row, info, topk)}
                for i, row in zip(index, logits, strict=True)
            ],
            logits,
            [(files[i], _decode_error(files[i])) for i in missing],
            files[start:stop],
        )


def _decode_error(file: str) -> str:
    """Why ``file`` could not be decoded: the decoder's one-line message, decoded again here.

    The worker processes only say that an image failed; failures are rare, so decoding the
    file once more in this process to get the reason costs little.
    """
    try:
        load_image(file)
    except SqueezeNetError as e:
        return str(e)
    return f"{file}: cannot decode image"  # failed in the worker (e.g. out of memory there)


def read_file_list(source: str) -> list[str]:
    """Image paths, one per line, from a text file or ``-`` (stdin); blank lines skipped."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as e:
        raise SqueezeNetError(f"{source}: cannot read file list ({e.strerror})") from None
    except UnicodeDecodeError:
        raise SqueezeNetError(f"{source}: not a file list (not UTF-8 text)") from None
    return [line for line in text.splitlines() if line.strip()]


def collect_inputs(paths: Iterable[str], files_from: str | None = None) -> list[str]:
    """Files and folders (searched recursively) plus the lines of ``files_from``, duplicates once.

    Listed files are taken as they are, not checked: one that is missing is reported when it
    is decoded, like any other unreadable image, instead of stopping a long list.
    """
    paths = list(paths)
    found = [str(p) for p in list_images(paths)] if paths else []
    if files_from is not None:
        found += read_file_list(files_from)
    if not found:
        raise SqueezeNetError("no images given: pass files, folders or --files-from LIST")
    return list(dict.fromkeys(found))


def shard(files: Sequence[str], index: int, count: int) -> list[str]:
    """Shard ``index`` of ``count``: every ``count``-th of the sorted files, starting at ``index``.

    Depends only on the set of files, so every machine computes the same split; the shards are
    disjoint, cover every file, and differ in size by at most one.
    """
    if not 0 <= index < count:
        raise SqueezeNetError(f"shard {index}/{count}: expected 0 <= I < N")
    return sorted(files)[index::count]


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise SqueezeNetError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    shard([], index, count)  # validates the range
    return index, count


def completed_files(output: str | Path) -> set[str]:
    """Files already in a JSON-lines output; a torn last line (a killed run) is cut off the file.

    A missing file means nothing was done yet. The file is read line by line, not whole.
    """
    path = Path(output)
    if not path.exists():
        return set()
    done, whole = set(), 0  # whole: bytes up to the end of the last complete line
    with open(path, "rb+") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):  # drop the partial line so it is redone, not doubled
                f.truncate(whole)
                os.fsync(f.fileno())
                break
            try:
                done.add(json.loads(line)["file"])
            except (ValueError, KeyError, TypeError):
                raise SqueezeNetError(
                    f"{path}:{number}: not a result line of 'squeezenet predict'; "
                    "cannot resume from it"
                ) from None
            whole += len(line)
    return done


class LineWriter:
    """Appends whole lines to a file: one ``write`` per chunk, ``fsync`` at least every second.

    A chunk is in the kernel once ``write`` returns, so a killed process loses nothing written;
    a machine that crashes loses at most the last ``sync_seconds`` (and perhaps leaves a torn
    last line, which ``completed_files`` drops). Syncing every batch instead would cost about
    5 ms a batch here, 8% of the time at 500 images/s.
    """

    def __init__(self, path: str | Path, sync_seconds: float = 1.0) -> None:
        path = Path(path)
        if not path.parent.is_dir():
            raise SqueezeNetError(f"{path}: folder {path.parent} does not exist")
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise output_error(path, e) from None
        self.sync_seconds = sync_seconds
        self.synced = time.monotonic()

    def write(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        view = memoryview(data)
        try:
            while view:  # O_APPEND: a regular file takes it whole; loop on the rare short write
                view = view[os.write(self.fd, view) :]
            if time.monotonic() - self.synced >= self.sync_seconds:
                self.sync()
        except OSError as e:
            self._failed(e)

    def _failed(self, error: OSError) -> None:
        # a torn last line is dropped by ``completed_files`` when the run is resumed
        raise OutputError(
            f"{output_error(self.path, error)}; every complete line is kept: make room and "
            "rerun with --resume"
        ) from None

    def sync(self) -> None:
        os.fsync(self.fd)
        self.synced = time.monotonic()

    def close(self) -> None:
        try:
            self.sync()
        except OSError as e:
            self._failed(e)
        finally:
            os.close(self.fd)

    def __enter__(self) -> LineWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        else:  # already failing: release the file without raising a second error
            os.close(self.fd)
