"""Canonical Huffman coding: round trips, length limits, prefix property, damaged streams."""

import numpy as np
import pytest

from squeezenet.errors import FormatError
from squeezenet.weights.formats import _huffman as huffman


@pytest.mark.parametrize(
    "symbols",
    [
        np.random.default_rng(0).integers(0, 64, 5000),  # near uniform
        np.minimum(np.random.default_rng(1).geometric(0.3, 20000) - 1, 255),  # skewed
        np.zeros(17, np.int64),  # one symbol only
        np.array([3, 7]),
    ],
)
def test_round_trip(symbols):
    counts = np.bincount(symbols, minlength=256)
    lengths = huffman.code_lengths(counts)
    data = huffman.encode(symbols, lengths)
    assert len(data) == (huffman.encoded_bits(counts, lengths) + 7) // 8
    np.testing.assert_array_equal(huffman.decode(data, lengths, len(symbols)), symbols)


def test_optimal_lengths_for_dyadic_counts():
    np.testing.assert_array_equal(huffman.code_lengths([8, 4, 2, 1, 1, 0]), [1, 2, 3, 4, 4, 0])


def test_length_limit_on_fibonacci_counts():
    counts = [1, 1]
    while len(counts) < 40:  # Fibonacci weights make the deepest possible tree
        counts.append(counts[-1] + counts[-2])
    lengths = huffman.code_lengths(np.array(counts))
    assert lengths.max() == huffman.MAX_LENGTH
    huffman.check_lengths(lengths)
    symbols = np.repeat(np.arange(40), 3)
    np.testing.assert_array_equal(
        huffman.decode(huffman.encode(symbols, lengths), lengths, len(symbols)), symbols
    )


def test_canonical_codes_are_prefix_free():
    lengths = huffman.code_lengths(np.random.default_rng(2).integers(1, 1000, 200))
    codes = huffman.canonical_codes(lengths)
    words = sorted(format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True))
    assert not any(b.startswith(a) for a, b in zip(words, words[1:], strict=False))


def test_damaged_streams_raise_format_error():
    lengths = np.array([1, 2, 0, 0])  # codes 0, 10; 11 is unused
    data = huffman.encode(np.array([0, 1, 1, 0]), lengths)
    with pytest.raises(FormatError, match="invalid Huffman code"):
        huffman.decode(b"\xff", lengths, 2)
    with pytest.raises(FormatError, match="ends"):
        huffman.decode(data, lengths, 8)
    with pytest.raises(FormatError, match="unexpected bits"):
        huffman.decode(data + b"\x00", lengths, 4)
    with pytest.raises(FormatError, match="cannot fit"):
        huffman.decode(data, lengths, 10**9)
    with pytest.raises(FormatError, match="prefix code"):
        huffman.decode(data, np.array([1, 1, 1, 0]), 4)
