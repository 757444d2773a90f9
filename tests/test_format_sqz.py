"""The .sqz format: exact round trips, Song Han's weights re-encoded, every damaged byte."""

import json
import struct
import zlib

import numpy as np
import pytest
import torch

import squeezenet
from squeezenet.data.transforms import get_preset
from squeezenet.errors import FormatError
from squeezenet.weights.formats import sqz as container

META = {
    "arch": "squeezenet1_1",
    "model_kwargs": {},
    "num_classes": 10,
    "preprocess": get_preset("caffe").to_dict(),
}


def tiny_state(seed: int = 0) -> tuple[dict, dict]:
    """A small state dict: sparse shared weights, a dense shared one, biases, an int tensor."""
    rng = np.random.default_rng(seed)
    book = np.concatenate([[0.0], np.linspace(-1, 1, 15)]).astype(np.float16).astype(np.float32)
    sparse = book[rng.integers(1, 16, (12, 8, 3, 3))] * (rng.random((12, 8, 3, 3)) < 0.3)
    sparse[-1] = 0  # a long zero run at the end: trailing fillers
    dense = book[rng.integers(0, 16, (10, 12, 1, 1))]
    state = {
        "a.weight": sparse,
        "a.bias": rng.standard_normal(12).astype(np.float32),
        "b.weight": dense,
        "b.steps": np.array(7, np.int64),
    }
    return state, {"a.weight": book, "b.weight": book}


def test_round_trip_exact_for_every_gap_width():
    state, books = tiny_state()
    sizes = []
    for gap_bits in [None, *range(container.MAX_GAP_BITS + 1)]:
        data, records = container.pack(state, META, books, dtype="float32", gap_bits=gap_bits)
        arrays, meta = container.unpack(data)
        assert meta == json.loads(json.dumps(META))
        assert list(arrays) == list(state)
        for key, value in state.items():
            np.testing.assert_array_equal(arrays[key], value)
            assert arrays[key].shape == value.shape
        sizes.append(len(data))
        assert records[0].nonzero == np.count_nonzero(state["a.weight"])
    assert sizes[0] == min(sizes)  # the automatic choice is the smallest


def test_float16_storage_rounds_and_values_must_be_in_the_codebook():
    state, books = tiny_state()
    arrays, _ = container.unpack(container.pack(state, META, books)[0])
    np.testing.assert_array_equal(arrays["a.bias"], state["a.bias"].astype(np.float16))
    np.testing.assert_array_equal(arrays["a.weight"], state["a.weight"])
    state["a.weight"][0, 0, 0, 0] = 0.123
    with pytest.raises(ValueError, match="not in its codebook"):
        container.pack(state, META, books)


def test_every_flipped_byte_and_every_truncation_is_a_format_error(tmp_path):
    state, books = tiny_state()
    data, _ = container.pack(state, META, books)
    assert 500 < len(data) < 4000
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        with pytest.raises(FormatError):
            container.unpack(bytes(damaged))
    for n in range(len(data)):
        with pytest.raises(FormatError):
            container.unpack(data[:n])
    path = tmp_path / "cut.sqz"
    path.write_bytes(data[:-1])
    with pytest.raises(FormatError, match="cut.sqz: checksum mismatch"):
        container.read(path)


def reseal(body: bytes) -> bytes:
    """Recompute the CRC so that damage reaches the structural checks behind it."""
    return body + struct.pack("<I", zlib.crc32(body))


def test_damage_behind_a_valid_checksum_never_crashes():
    """Flip each byte and fix the CRC: a FormatError, or tensors of the declared shapes."""
    state, books = tiny_state(1)
    data, _ = container.pack(state, META, books)
    outcomes = {"error": 0, "decoded": 0}
    for i in range(len(data) - 4):
        for flip in (0x01, 0x80):
            damaged = bytearray(data[:-4])
            damaged[i] ^= flip
            try:
                arrays, _ = container.unpack(reseal(bytes(damaged)))
            except FormatError:
                outcomes["error"] += 1
                continue
            outcomes["decoded"] += 1
            assert all(a.dtype in (np.float32, np.int64) for a in arrays.values())
            assert sum(a.size for a in arrays.values()) == sum(v.size for v in state.values())
    assert outcomes["error"] > 0 and outcomes["decoded"] > 0


def craft(records: list[dict], payload: bytes, meta: dict = META) -> bytes:
    header = zlib.compress(json.dumps({"meta": meta, "tensors": records}).encode())
    return reseal(struct.pack("<4sHI", b"SQZ\x00", 1, len(header)) + header + payload)


@pytest.mark.parametrize(
    "record, payload, message",
    [
        ({"name": "w", "shape": [1 << 30, 1 << 30], "dtype": "float32"}, b"", "payload"),
        (
            {"name": "w", "shape": [1 << 30], "dtype": "float16", "k": 2, "gap_bits": 8,
             "entries": 8, "code_bytes": 1, "gap_bytes": 1},
            b"\x00" * 8, "cannot cover",
        ),
        (
            {"name": "w", "shape": [4], "dtype": "float16", "k": 2, "gap_bits": 0,
             "entries": 10**12, "code_bytes": 1, "gap_bytes": 0},
            b"\x00" * 8, "bad entries",
        ),
        ({"name": "w", "shape": [-1], "dtype": "float32"}, b"", "bad shape"),
        ({"name": "w", "shape": [1], "dtype": "complex64"}, b"", "unknown dtype"),
    ],
)  # fmt: skip
def test_crafted_sizes_are_refused_before_allocating(record, payload, message):
    with pytest.raises(FormatError, match=message):
        container.unpack(craft([record], payload))


def test_bad_magic_version_and_metadata():
    state, books = tiny_state()
    data, _ = container.pack(state, META, books)
    with pytest.raises(FormatError, match="no SQZ magic"):
        container.unpack(b"PK\x03\x04" + data[4:])
    with pytest.raises(FormatError, match="version 2"):
        container.unpack(reseal(data[:4] + b"\x02\x00" + data[6:-4]))
    with pytest.raises(FormatError, match="metadata preprocess"):
        container.unpack(craft([], b"", {**META, "preprocess": {"crop": "big"}}))
    with pytest.raises(FormatError, match="'num_classes'"):
        container.unpack(craft([], b"", {k: v for k, v in META.items() if k != "num_classes"}))


@pytest.fixture(scope="module")
def han_model():
    from conftest import shared_path

    return squeezenet.load_model(shared_path("weights/deep-compression/compressed_SqueezeNet.net"))


def test_song_han_weights_re_encoded_losslessly_and_smaller(han_model, tmp_path):
    """The released 8-bit weights, Huffman-coded in .sqz, load to the very same network."""
    state = {k: v.numpy() for k, v in han_model.state_dict().items()}
    books = {}
    for key, value in state.items():
        if key.endswith("weight"):
            books[key] = np.concatenate([[0.0], np.unique(value[value != 0])]).astype(np.float32)
    meta = han_model.weights_info.to_meta()
    path = tmp_path / "han.sqz"
    container.write(path, state, meta, books, dtype="float32")
    assert path.stat().st_size < 560_000  # the .net file has 675,763 bytes
    model = squeezenet.load_model(path)
    assert model.weights_info.arch == "squeezenet1_0"
    assert model.weights_info.preprocess == han_model.weights_info.preprocess
    assert model.weights_info.model_kwargs == {"classifier_padding": 1}
    for key, value in han_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    same = squeezenet.create_model("squeezenet1_0", weights=path)
    assert same.weights_info.file_format == "sqz"


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_shared_record_bytes_predicts_the_packed_size_exactly(dtype):
    """The size model compress searches with is the size pack writes, at every gap width."""
    state, books = tiny_state()
    book = books["a.weight"]
    for name in ("a.weight", "b.weight"):
        codes = np.searchsorted(book[1:], state[name]) + 1  # codebook indices, 0 for zeros
        codes[state[name] == 0] = 0
        for gap_bits in [None, *range(container.MAX_GAP_BITS + 1)]:
            _, records = container.pack(state, META, books, dtype=dtype, gap_bits=gap_bits)
            [record] = [r for r in records if r.name == name]
            expected = record.nbytes
            assert container.shared_record_bytes(codes, len(book), dtype, gap_bits) == expected
