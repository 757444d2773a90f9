"""Canonical Huffman coding of small alphabets (at most 256 symbols), vectorised with NumPy.

A code is described by its code lengths alone (0 = symbol unused, at most ``MAX_LENGTH``
bits): canonical codes are assigned in order of (length, symbol), as in DEFLATE, so a table
of lengths is all a decoder needs. Bits are packed most significant first; the last byte is
padded with zero bits.
"""

from __future__ import annotations

import heapq

import numpy as np

from ...errors import FormatError

MAX_LENGTH = 15  # lengths fit in 4 bits


def code_lengths(counts: np.ndarray, max_length: int = MAX_LENGTH) -> np.ndarray:
    """Huffman code lengths (uint8) for symbol ``counts``, none longer than ``max_length``.

    Unused symbols get length 0; a lone used symbol gets length 1. When the optimal code is
    too deep, counts are halved (keeping them nonzero) until it fits, a standard heuristic.
    """
    counts = np.asarray(counts, np.int64)
    lengths = np.zeros(len(counts), np.uint8)
    used = np.flatnonzero(counts)
    if len(used) == 1:
        lengths[used] = 1
    if len(used) <= 1:
        return lengths
    weights = counts[used]
    while True:
        depth = _tree_depths(weights)
        if depth.max() <= max_length:
            lengths[used] = depth
            return lengths
        weights = np.maximum(weights >> 1, 1)


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    """Depth of each leaf in a Huffman tree over ``weights`` (two or more)."""
    heap = [(int(w), i, [i]) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    depth = np.zeros(len(weights), np.int64)
    while len(heap) > 1:
        w1, t1, leaves1 = heapq.heappop(heap)
        w2, t2, leaves2 = heapq.heappop(heap)
        depth[leaves1 + leaves2] += 1
        heapq.heappush(heap, (w1 + w2, min(t1, t2), leaves1 + leaves2))
    return depth


def check_lengths(lengths: np.ndarray) -> None:
    """Raise FormatError unless ``lengths`` describe a prefix code (Kraft sum at most 1)."""
    lengths = np.asarray(lengths, np.int64)
    if lengths.max(initial=0) > MAX_LENGTH:
        raise FormatError(f"Huffman code length {lengths.max()} exceeds {MAX_LENGTH}")
    used = lengths[lengths > 0]
    if (1 << (MAX_LENGTH - used)).sum() > 1 << MAX_LENGTH:
        raise FormatError("Huffman code lengths do not form a prefix code")


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code (as an integer of ``lengths[s]`` bits) of every symbol."""
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(len(lengths), np.int64)
    code, previous = 0, 0
    for symbol in np.lexsort((np.arange(len(lengths)), lengths)):
        length = lengths[symbol]
        if length == 0:
            continue
        code <<= length - previous
        codes[symbol], code, previous = code, code + 1, length
    return codes


def encoded_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Size in bits of a stream with these symbol counts under these lengths."""
    return int((np.asarray(counts, np.int64) * lengths).sum())


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Pack ``symbols`` with the canonical code of ``lengths`` (every symbol must have one)."""
    symbols = np.asarray(symbols, np.int64)
    if len(symbols) == 0:
        return b""
    sizes = np.asarray(lengths, np.int64)[symbols]
    if (sizes == 0).any():
        raise ValueError("a symbol to encode has no code")
    codes = canonical_codes(lengths)[symbols]
    width = int(sizes.max())
    shift = sizes[:, None] - 1 - np.arange(width)  # bit j of a code, most significant first
    bits = (codes[:, None] >> np.maximum(shift, 0)) & 1
    return np.packbits(bits[shift >= 0].astype(np.uint8)).tobytes()


def decode(data: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
    """Decode exactly ``count`` symbols (uint8) from ``data``, which they must fill up to padding.

    Every bit offset is looked up at once in a table of ``2**L`` entries (L = longest code);
    a Python loop then only follows the chain of code starts. Raises FormatError on invalid
    codes, on running out of data, and on leftover bytes or nonzero padding.
    """
    check_lengths(lengths)
    lengths = np.asarray(lengths, np.int64)
    if count == 0:
        if data:
            raise FormatError(f"{len(data)} bytes of Huffman data for no symbols")
        return np.zeros(0, np.uint8)
    if count > 8 * len(data):
        raise FormatError(f"{count} symbols cannot fit in {len(data)} bytes")
    width = int(lengths.max(initial=0))
    if width == 0:
        raise FormatError("Huffman table has no symbols")
    table_symbol = np.zeros(1 << width, np.uint8)
    table_length = np.zeros(1 << width, np.int64)  # 0: no code starts with these bits
    for symbol, code in enumerate(canonical_codes(lengths)):
        if lengths[symbol]:
            span = width - int(lengths[symbol])
            table_symbol[code << span : (code + 1) << span] = symbol
            table_length[code << span : (code + 1) << span] = lengths[symbol]
    bits = np.unpackbits(np.frombuffer(data, np.uint8)).astype(np.int64)
    nbits = len(bits)
    padded = np.concatenate([bits, np.zeros(width, np.int64)])
    window = np.zeros(nbits, np.int64)
    for j in range(width):
        window = (window << 1) | padded[j : j + nbits]
    steps = table_length[window].tolist()
    starts = []
    pos = 0
    for _ in range(count):
        if pos >= nbits:
            raise FormatError(f"Huffman data ends after {len(starts)} of {count} symbols")
        step = steps[pos]
        if step == 0:
            raise FormatError(f"invalid Huffman code at bit {pos}")
        starts.append(pos)
        pos += step
    if pos > nbits:
        raise FormatError("Huffman data ends inside the last code")
    if nbits - pos >= 8 or bits[pos:].any():
        raise FormatError(f"{nbits - pos} unexpected bits after {count} Huffman symbols")
    return table_symbol[window[starts]]
