"""One weight-shared tensor as ``.sqz`` stores it (private to ``sqz``, whose docstring has the
layout): a codebook, the code lengths of two canonical Huffman codes, then the Huffman-coded
codebook indices and zero-run gaps of its entries."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ...errors import FormatError
from . import _huffman as huffman

FLOAT_DTYPES = {"float16": "<f2", "float32": "<f4"}
MAX_GAP_BITS = 8


class Coded(NamedTuple):
    """A shared tensor's bytes and the counts its record keeps."""

    payload: bytes
    gap_bits: int
    entries: int
    code_bytes: int
    gap_bytes: int
    nonzero: int


def _nibbles(lengths: np.ndarray) -> bytes:
    padded = np.append(lengths, 0) if len(lengths) % 2 else lengths
    return (padded[0::2] << 4 | padded[1::2]).astype(np.uint8).tobytes()


def _unnibble(data: bytes, count: int) -> np.ndarray:
    packed = np.frombuffer(data, np.uint8)
    return np.stack([packed >> 4, packed & 0xF], axis=1).reshape(-1)[:count]


def _streams(codes: np.ndarray, positions: np.ndarray, numel: int, g: int):
    """Entry codes and gaps (with fillers) for the nonzero ``positions`` and their ``codes``."""
    if g == 0:
        dense = np.zeros(numel, np.int64)
        dense[positions] = codes
        return dense, np.zeros(0, np.int64)
    step = 1 << g
    skipped = np.diff(positions, prepend=-1) - 1
    fillers = skipped >> g
    trailing = (numel - 1 - (positions[-1] if len(positions) else -1)) >> g
    slots = np.cumsum(fillers + 1) - 1  # where each value lands among the entries
    total = len(positions) + int(fillers.sum()) + trailing
    gaps = np.full(total, step - 1, np.int64)
    entry_codes = np.zeros(total, np.int64)
    gaps[slots] = skipped & (step - 1)
    entry_codes[slots] = codes
    return entry_codes, gaps


def table_bytes(k: int, g: int) -> int:
    """Bytes of the two code-length tables (4 bits per symbol)."""
    return (k + 1) // 2 + ((1 << g) + 1) // 2 if g else (k + 1) // 2


def _counts(codes: np.ndarray, positions: np.ndarray, k: int, g: int):
    """Symbol counts of the code and gap streams at gap width ``g``, fillers included, without
    building the streams: ``codes`` holds every position's codebook index (0: zero)."""
    if g == 0:
        return np.bincount(codes, minlength=k), np.zeros(0, np.int64)
    skipped = np.diff(positions, prepend=-1) - 1
    trailing = (codes.size - 1 - (positions[-1] if len(positions) else -1)) >> g
    fillers = int((skipped >> g).sum()) + trailing
    code_counts = np.bincount(codes[positions], minlength=k)
    code_counts[0] += fillers  # a filler is code 0 with the largest gap
    gap_counts = np.bincount(skipped & ((1 << g) - 1), minlength=1 << g)
    gap_counts[-1] += fillers
    return code_counts, gap_counts


def _smallest(codes: np.ndarray, k: int, gap_bits: int | None) -> tuple[int, int]:
    """(gap width, bytes of the tables and coded streams) of the smallest encoding."""
    positions = np.flatnonzero(codes)
    best = None
    for g in [gap_bits] if gap_bits is not None else range(MAX_GAP_BITS + 1):
        size = table_bytes(k, g)
        for counts in _counts(codes, positions, k, g):
            size += (huffman.encoded_bits(counts, huffman.code_lengths(counts)) + 7) // 8
        if best is None or size < best[1]:
            best = (g, size)
    return best


def shared_record_bytes(codes: np.ndarray, k: int, dtype: str, gap_bits: int | None = None) -> int:
    """Payload bytes of a shared record whose positions hold these codebook indices (0: zero),
    exactly as :func:`encode` writes it, from the symbol counts alone."""
    codes = np.asarray(codes, np.int64).reshape(-1)
    return k * np.dtype(FLOAT_DTYPES[dtype]).itemsize + _smallest(codes, k, gap_bits)[1]


def encode(name: str, array: np.ndarray, codebook, dtype: str, gap_bits: int | None) -> Coded:
    """Codes of the nonzero values of ``array`` in ``codebook``, Huffman-coded with gaps.

    ``gap_bits`` None tries 0..MAX_GAP_BITS and keeps the smallest encoding.
    """
    codebook = np.asarray(codebook, np.float32).reshape(-1)
    if not 2 <= len(codebook) <= 256 or codebook[0] != 0:
        raise ValueError(f"{name}: a codebook needs 2..256 values, the first 0.0")
    flat = np.asarray(array, np.float32).reshape(-1)
    positions = np.flatnonzero(flat)
    values = flat[positions]
    order = np.argsort(codebook[1:], kind="stable")
    sorted_values = codebook[1:][order]
    slot = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    if (sorted_values[slot] != values).any():
        bad = values[sorted_values[slot] != values][0]
        raise ValueError(f"{name}: value {float(bad)!r} is not in its codebook")
    codes = np.zeros(flat.size, np.int64)
    codes[positions] = order[slot] + 1
    k = len(codebook)
    g, _ = _smallest(codes, k, gap_bits)
    entry_codes, gaps = _streams(codes[positions], positions, flat.size, g)
    code_lengths = huffman.code_lengths(np.bincount(entry_codes, minlength=k))
    gap_lengths = huffman.code_lengths(np.bincount(gaps, minlength=1 << g))
    code_data = huffman.encode(entry_codes, code_lengths)
    gap_data = huffman.encode(gaps, gap_lengths) if g else b""
    parts = [codebook.astype(FLOAT_DTYPES[dtype]).tobytes(), _nibbles(code_lengths)]
    parts += [_nibbles(gap_lengths)] if g else []
    payload = b"".join(parts + [code_data, gap_data])
    return Coded(payload, g, len(entry_codes), len(code_data), len(gap_data), len(positions))


def decode(
    chunk: bytes, shape: tuple[int, ...], dtype: str, k: int, g: int, entries: int, code_bytes: int
) -> np.ndarray:
    """The dense float32 tensor of one shared record's bytes; FormatError when damaged."""
    itemsize = np.dtype(FLOAT_DTYPES[dtype]).itemsize
    codebook = np.frombuffer(chunk, FLOAT_DTYPES[dtype], k).astype(np.float32)
    offset = k * itemsize
    code_lengths = _unnibble(chunk[offset:], k)
    offset += (k + 1) // 2
    gap_lengths = _unnibble(chunk[offset:], 1 << g) if g else None
    offset += ((1 << g) + 1) // 2 if g else 0
    codes = huffman.decode(chunk[offset : offset + code_bytes], code_lengths, entries)
    offset += code_bytes
    if not g:
        return codebook[codes].reshape(shape)
    gaps = huffman.decode(chunk[offset:], gap_lengths, entries)
    numel = math.prod(shape)
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    last = positions[-1] if len(positions) else -1
    if last >= numel or numel - 1 - last >= 1 << g:
        raise FormatError(f"entries cover {last + 1} of {numel} values")
    weight = np.zeros(numel, np.float32)
    weight[positions] = codebook[codes]
    return weight.reshape(shape)
