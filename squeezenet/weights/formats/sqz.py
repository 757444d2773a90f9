"""The ``.sqz`` container: a pruned, weight-shared, Huffman-coded model in one checked file.

Layout (little-endian; docs/compress.md has the full description)::

    b"SQZ\\x00"  uint16 version  uint32 H  header[H]  payload  uint32 crc32

The header is zlib-compressed UTF-8 JSON, ``{"meta": {...}, "tensors": [record, ...]}``: the
model's metadata (arch, model_kwargs, num_classes, preprocess, ...) and one record per
state-dict tensor, in payload order. A *dense* record stores the tensor as float16, float32 or
int64. A *shared* record stores a codebook of ``k`` values (``codebook[0] == 0`` is reserved
for zeros), the code lengths of two canonical Huffman codes (4 bits each), then the
Huffman-coded codes and gaps of its entries. With ``gap_bits = g > 0`` an entry sits
``gap + 1`` positions after the previous one (the first at ``gap``); zero runs of ``2**g`` or
more are bridged by filler entries (gap ``2**g - 1``, code 0), also up to the end of the
tensor, so fewer than ``2**g`` zeros follow the last entry. With ``g = 0`` every position is an
entry (no gaps). The CRC-32 covers every byte before it. Every count and size is checked
against the bytes present before anything is allocated, so damaged files raise FormatError.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...data.transforms import get_preset
from ...errors import FormatError
from ...io import atomic_write_bytes
from . import Contents, Hints, _codebook
from ._codebook import FLOAT_DTYPES, MAX_GAP_BITS, decode, encode, table_bytes

MAGIC = b"SQZ\x00"
VERSION = 1
DTYPES = {**FLOAT_DTYPES, "int64": "<i8"}
MAX_HEADER = 1 << 24  # bytes of header JSON once inflated
_PREAMBLE = struct.Struct("<4sHI")
SUFFIXES = (".sqz",)
WRITTEN_BY = "squeezenet compress"  # codebooks come from compression; save_model has none
shared_record_bytes = _codebook.shared_record_bytes  # public: compress sizes records with it


@dataclass
class Record:
    """How one tensor is stored; ``nbytes`` is its share of the payload."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    k: int = 0  # codebook size; 0 for a dense record
    gap_bits: int = 0
    entries: int = 0
    code_bytes: int = 0
    gap_bytes: int = 0
    nonzero: int = 0  # known when writing

    @property
    def shared(self) -> bool:
        return self.k > 0

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.shared:
            keys = ("k", "gap_bits", "entries", "code_bytes", "gap_bytes")
            out.update({key: getattr(self, key) for key in keys})
        return out


def pack(
    state: dict[str, np.ndarray],
    meta: dict,
    codebooks: dict[str, np.ndarray] | None = None,
    *,
    dtype: str = "float16",
    gap_bits: int | None = None,
) -> tuple[bytes, list[Record]]:
    """Encode a state dict: tensors with a codebook as shared records, the rest dense.

    Floats are stored as ``dtype`` (rounded); the nonzero values of a shared tensor must all
    be in its codebook. ``gap_bits`` None picks the smallest encoding per tensor (0..8).
    """
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(FLOAT_DTYPES)}, not {dtype!r}")
    if gap_bits is not None and not 0 <= gap_bits <= MAX_GAP_BITS:
        raise ValueError(f"gap_bits must be in 0..{MAX_GAP_BITS}, not {gap_bits}")
    codebooks = codebooks or {}
    records, parts = [], []
    for name, array in state.items():
        array = np.asarray(array)
        if name in codebooks:
            coded = encode(name, array, codebooks[name], dtype, gap_bits)
            payload, k = coded.payload, int(np.size(codebooks[name]))
            record = Record(name, tuple(array.shape), dtype, len(payload), k, *coded[1:])
        else:
            kind = "int64" if array.dtype.kind in "iub" else dtype
            payload = array.astype(DTYPES[kind]).tobytes()
            nonzero = int(np.count_nonzero(array))
            record = Record(name, tuple(array.shape), kind, len(payload), nonzero=nonzero)
        records.append(record)
        parts.append(payload)
    header = json.dumps({"meta": meta, "tensors": [r.to_json() for r in records]})
    header = zlib.compress(header.encode(), 9)
    body = _PREAMBLE.pack(MAGIC, VERSION, len(header)) + header + b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body)), records


def write(path: str | Path, state, meta, codebooks=None, **options) -> list[Record]:
    """:func:`pack` into ``path`` atomically; returns the records (sizes per tensor)."""
    data, records = pack(state, meta, codebooks, **options)
    atomic_write_bytes(path, data)
    return records


def sniff(head: bytes) -> bool:
    return head.startswith(MAGIC)


def load(path: Path, hints: Hints) -> Contents:
    """The dense state dict and the model's metadata (written by ``squeezenet compress``)."""
    state, meta = read(path)
    return Contents(state=state, meta=meta)


def read(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Decode a ``.sqz`` file into (dense state dict of float32/int64 arrays, metadata)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return unpack(data)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None


def unpack(data: bytes) -> tuple[dict[str, np.ndarray], dict]:
    """Decode the bytes of a ``.sqz`` file; FormatError says what is wrong."""
    if len(data) < _PREAMBLE.size + 4 or not data.startswith(MAGIC):
        raise FormatError("not a .sqz file (no SQZ magic)" if data[:4] != MAGIC else "truncated")
    _, version, header_len = _PREAMBLE.unpack_from(data)
    if version != VERSION:
        raise FormatError(f".sqz version {version} is not supported (this reader: {VERSION})")
    (stored,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != stored:
        raise FormatError("checksum mismatch: the file is damaged or truncated")
    payload_start = _PREAMBLE.size + header_len
    if payload_start > len(data) - 4:
        raise FormatError(f"header length {header_len} runs past the end of the file")
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(data[_PREAMBLE.size : payload_start], MAX_HEADER)
        if inflate.unconsumed_tail or not inflate.eof:
            raise FormatError(f"header is not one zlib stream of at most {MAX_HEADER} bytes")
        header = json.loads(text.decode())
    except (zlib.error, UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError("damaged header (not zlib-compressed JSON)") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise FormatError("header has no tensor list")
    meta = _check_meta(header.get("meta"))
    records = [_parse_record(r) for r in header["tensors"]]
    payload = memoryview(data)[payload_start:-4]
    if sum(r.nbytes for r in records) != len(payload):
        raise FormatError(
            f"payload of {len(payload)} bytes, the records describe "
            f"{sum(r.nbytes for r in records)}"
        )
    arrays, offset = {}, 0
    for r in records:
        chunk = bytes(payload[offset : offset + r.nbytes])
        offset += r.nbytes
        if r.name in arrays:
            raise FormatError(f"tensor {r.name!r} appears twice")
        if not r.shared:
            arrays[r.name] = _decode_dense(r, chunk)
            continue
        try:
            arrays[r.name] = decode(
                chunk, r.shape, r.dtype, r.k, r.gap_bits, r.entries, r.code_bytes
            )
        except FormatError as e:
            raise FormatError(f"tensor {r.name!r}: {e}") from None
    return arrays, meta


def _int(record: dict, key: str, low: int, high: float) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise FormatError(f"tensor record {str(record.get('name'))[:80]!r}: bad {key} {value!r}")
    return value


def _parse_record(raw) -> Record:
    """Validate one header record and compute its payload size (before any allocation)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise FormatError("tensor record without a name")
    shape = raw.get("shape")
    if not isinstance(shape, list) or len(shape) > 8:
        raise FormatError(f"tensor {raw['name']!r}: bad shape {shape!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31 for d in shape):
        raise FormatError(f"tensor {raw['name']!r}: bad shape {shape!r}")
    shape = tuple(shape)
    dtype = raw.get("dtype")
    if dtype not in DTYPES:
        raise FormatError(f"tensor {raw['name']!r}: unknown dtype {dtype!r}")
    numel, itemsize = math.prod(shape), np.dtype(DTYPES[dtype]).itemsize
    if "k" not in raw:
        return Record(raw["name"], shape, dtype, numel * itemsize)
    if dtype not in FLOAT_DTYPES:
        raise FormatError(f"tensor {raw['name']!r}: a codebook must be float16 or float32")
    k = _int(raw, "k", 2, 256)
    g = _int(raw, "gap_bits", 0, MAX_GAP_BITS)
    code_bytes = _int(raw, "code_bytes", 0, 1 << 40)
    gap_bytes = _int(raw, "gap_bytes", 0, 1 << 40)
    entries = _int(raw, "entries", 0, 8 * code_bytes)
    if g == 0 and (entries != numel or gap_bytes):
        raise FormatError(f"tensor {raw['name']!r}: {entries} entries for {numel} values")
    if g and (entries > 8 * gap_bytes or numel > (entries + 1) << g):
        raise FormatError(f"tensor {raw['name']!r}: {entries} entries cannot cover {numel} values")
    nbytes = k * itemsize + table_bytes(k, g) + code_bytes + gap_bytes
    return Record(raw["name"], shape, dtype, nbytes, k, g, entries, code_bytes, gap_bytes)


def _decode_dense(r: Record, chunk: bytes) -> np.ndarray:
    array = np.frombuffer(chunk, DTYPES[r.dtype]).reshape(r.shape)
    return array.astype(np.int64 if r.dtype == "int64" else np.float32)


def _check_meta(meta) -> dict:
    """The metadata load_model relies on must be present with the right types."""
    if not isinstance(meta, dict):
        raise FormatError("header has no metadata")
    expected = {"arch": str, "model_kwargs": dict, "num_classes": int, "preprocess": dict}
    for key, kind in expected.items():
        if not isinstance(meta.get(key), kind):
            raise FormatError(f"metadata {key!r} is missing or not a {kind.__name__}")
    reference = get_preset("caffe").to_dict()
    for key, value in reference.items():  # the same types as a built-in preset's
        found = meta["preprocess"].get(key)
        if isinstance(value, tuple):
            ok = isinstance(found, list) and len(found) == len(value)
            ok = ok and all(isinstance(v, int | float) for v in found)
        else:
            ok = isinstance(found, type(value) if not isinstance(value, float) else int | float)
        if not ok:
            raise FormatError(f"metadata preprocess {key!r} is missing or malformed")
    return meta
