"""Shared pieces of the fuzz tests: mutations of real files, and bounded time and memory.

A reader passes when every input ends either in a result or in the project's own error
(``SqueezeNetError``, of which ``FormatError`` is one) with a one-line message naming the file,
without ``MEMORY`` more address space. Any other exception or a ``MemoryError`` fails the
test, and so does a hang: an alarm raises ``Hang`` in an input still running after ``SECONDS``
(speed is measured in benchmarks/, never asserted here). ``SQUEEZENET_FUZZ_REPORT=FILE``
appends the counts of outcomes per target and kind of input to FILE (tab-separated).
"""

from __future__ import annotations

import io
import os
import resource
import signal
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from squeezenet.errors import SqueezeNetError

SECONDS = 20  # alarm per input: only a hang gets near it, even on a shared machine
MEMORY = 1 << 30  # address space an input may add
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same inputs on every run: CI stays deterministic
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ABSURD = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 40, (1 << 63) - 1]
OUTCOMES: Counter[tuple[str, str, str]] = Counter()


class Hang(BaseException):
    """Raised in the main thread when an input takes too long (no ``except Exception`` eats it)."""


@contextmanager
def bounded(seconds: float = SECONDS) -> Iterator[None]:
    """Limit the address space to its current size + MEMORY; raise Hang after ``seconds``."""

    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (current + MEMORY, hard))
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def check(
    target: str, kind: str, run: Callable[[], object], names: list[str], must_fail: bool
) -> str | None:
    """Run one input: a result (unless ``must_fail``) or a SqueezeNetError naming a file.

    Returns the error's message, or None when the input loaded.
    """
    try:
        with bounded():
            run()
        outcome, message = "loaded", ""
    except SqueezeNetError as e:
        outcome, message = "error", str(e)
    except BaseException as e:  # counted, then reported by pytest as the failure it is
        OUTCOMES[target, kind, f"FAILED: {type(e).__name__}"] += 1
        raise
    OUTCOMES[target, kind, outcome] += 1
    if outcome == "error":
        assert "\n" not in message and any(n in message for n in names), message
    assert not (must_fail and outcome == "loaded"), f"{target}: {kind} input was accepted"
    return message or None


def report() -> None:
    """Append the outcome counts to $SQUEEZENET_FUZZ_REPORT, if set, and clear them."""
    if os.environ.get("SQUEEZENET_FUZZ_REPORT"):
        with open(os.environ["SQUEEZENET_FUZZ_REPORT"], "a") as f:
            f.writelines(f"{t}\t{k}\t{o}\t{n}\n" for (t, k, o), n in sorted(OUTCOMES.items()))
    OUTCOMES.clear()


@dataclass(frozen=True)
class Damage:
    """One reproducible change to a file, short to print: ``Damage('bitflip', ((12, 3),))``."""

    kind: str  # truncate, bitflip, absurd-int, delete, random; member (inside a zip)
    edits: tuple = ()

    def apply(self, seed: bytes) -> bytes:
        if self.kind == "member":
            return rezip(seed, *self.edits)
        if self.kind == "truncate":
            return seed[: self.edits[0]]
        if self.kind == "random":
            return self.edits[0]
        data = bytearray(seed)
        if self.kind == "bitflip":
            for at, bit in self.edits:
                data[at] ^= 1 << bit
        elif self.kind == "absurd-int":
            at, width, value, order = self.edits
            data[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, order)
        else:  # delete
            at, length = self.edits
            del data[at : at + length]
        return bytes(data)


@st.composite
def damages(draw, size: int, head: int = 4096) -> Damage:
    """A truncation, bit flips, an absurd integer, a deleted span, or noise for a file of size.

    Half of the positions fall in the first ``head`` bytes, where formats keep their headers.
    """
    kind = draw(st.sampled_from(["truncate", "bitflip", "absurd-int", "delete", "random"]))

    def position(room: int = 1) -> int:
        last = size - room
        return draw(st.integers(0, min(head, size) - room) | st.integers(0, last))

    if kind == "truncate":
        return Damage(kind, (draw(st.integers(0, size - 1)),))
    if kind == "bitflip":
        count = draw(st.integers(1, 8))
        return Damage(kind, tuple((position(), draw(st.integers(0, 7))) for _ in range(count)))
    if kind == "absurd-int":
        width = draw(st.sampled_from([2, 4, 8]))
        value = draw(st.sampled_from(ABSURD))
        return Damage(
            kind, (position(width), width, value, draw(st.sampled_from(["little", "big"])))
        )
    if kind == "delete":
        return Damage(kind, (position(), draw(st.integers(1, 64))))
    return Damage(kind, (draw(st.binary(max_size=4096)),))


def rezip(seed: bytes, member: str, damage: Damage) -> bytes:
    """The zip ``seed`` with ``damage`` done to the member whose name ends with ``member``, its
    CRC made right again: a valid archive with damaged content (a .pt2's JSON tables and
    graph), for the reader behind the zip layer."""
    source, out = zipfile.ZipFile(io.BytesIO(seed)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            target.writestr(
                item, damage.apply(content) if item.filename.endswith(member) else content
            )
    return out.getvalue()


@st.composite
def member_damages(draw, seed: bytes, members: tuple[str, ...]) -> Damage:
    """Damage (as ``damages``) to one of the zip members named by the ends of their names."""
    member = draw(st.sampled_from(members))
    names = zipfile.ZipFile(io.BytesIO(seed)).namelist()
    size = zipfile.ZipFile(io.BytesIO(seed)).getinfo(next(n for n in names if n.endswith(member)))
    return Damage("member", (member, draw(damages(size.file_size))))


def sweep(size: int, count: int = 24) -> Iterator[Damage]:
    """Deterministic damage: truncations at spread-out lengths and single bit flips."""
    cuts = {*range(0, min(size, 64), 7), *(size * i // count for i in range(1, count))}
    yield from (Damage("truncate", (cut,)) for cut in sorted(cuts))
    yield from (Damage("bitflip", (((size - 1) * i // (count - 1), 4),)) for i in range(count))


def png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A 1-bit grayscale PNG; ``rows`` defaults to all-zero pixels (compresses ~1000:1)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    if rows is None:
        rows = bytes((width + 7) // 8 + 1) * height
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )
