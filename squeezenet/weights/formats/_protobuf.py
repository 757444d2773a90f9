"""Generic protobuf, without the protobuf package: text format to dicts, wire format both ways.

Nothing here knows a schema. Text format parses into nested dicts (a repeated key holds a
list); the wire format is walked as (field number, wire type, value) triples and written from
the same pieces. Damaged input raises :class:`DecodeError`, which callers re-raise as a
FormatError naming their file.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator


class DecodeError(Exception):
    """Damaged bytes or text."""


# --- text format ---------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<space>\s+|\#[^\n]*)
    |(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<word>[\w.+-]+)
    |(?P<punct>[{}<>:\[\],;])""",
    re.X,
)
_CLOSE = {"{": "}", "<": ">"}


def _tokens(text: str) -> Iterator[tuple[str, str, int]]:
    pos, line = 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise DecodeError(f"line {line}: unexpected character {text[pos]!r}")
        if match.lastgroup != "space":
            yield match.lastgroup, match.group(), line
        line += match.group().count("\n")
        pos = match.end()


def _scalar(kind: str, token: str, line: int) -> object:
    if kind == "str":
        try:
            return ast.literal_eval(token)
        except (ValueError, SyntaxError):
            raise DecodeError(f"line {line}: bad string {token}") from None
    if kind != "word":
        raise DecodeError(f"line {line}: expected a value, got {token!r}")
    if token in ("true", "True"):
        return True
    if token in ("false", "False"):
        return False
    if re.fullmatch(r"[-+]?(\d|\.\d|inf|nan).*", token):
        try:
            return int(token, 0)
        except ValueError:
            try:
                return float(re.sub(r"(?<=[\d.])[fF]$", "", token))
            except ValueError:
                raise DecodeError(f"line {line}: bad number {token}") from None
    return token  # an enum value


def _add(message: dict, key: str, value: object) -> None:
    if key not in message:
        message[key] = value
    elif isinstance(message[key], list):
        message[key].append(value)
    else:
        message[key] = [message[key], value]


def parse_text(text: str) -> dict:
    """Protobuf text format -> nested dicts; a repeated key holds a list.

    Quoted strings become str, numbers int or float, true/false bool, enum values bare str.
    """
    tokens = list(_tokens(text))
    root: dict = {}
    stack: list[tuple[dict, str, int]] = [(root, "", 0)]  # message, closing token, its line
    i = 0
    while i < len(tokens):
        kind, token, line = tokens[i]
        i += 1
        if token in (",", ";"):
            continue
        if token in ("}", ">"):
            if token != stack[-1][1]:
                raise DecodeError(f"line {line}: unbalanced {token!r}")
            stack.pop()
            continue
        if kind != "word":
            raise DecodeError(f"line {line}: expected a field name, got {token!r}")
        colon = i < len(tokens) and tokens[i][1] == ":"
        i += colon
        if i >= len(tokens):
            raise DecodeError(f"line {line}: field {token!r} has no value")
        vkind, value, vline = tokens[i]
        i += 1
        if value in _CLOSE:
            child: dict = {}
            _add(stack[-1][0], token, child)
            stack.append((child, _CLOSE[value], vline))
        elif not colon:
            raise DecodeError(f"line {vline}: expected ':' or '{{' after {token!r}")
        elif value == "[":
            items = []
            while i < len(tokens) and tokens[i][1] != "]":
                if tokens[i][1] != ",":
                    items.append(_scalar(*tokens[i]))
                i += 1
            if i >= len(tokens):
                raise DecodeError(f"line {vline}: unclosed '['")
            i += 1
            for item in items:
                _add(stack[-1][0], token, item)
        else:
            _add(stack[-1][0], token, _scalar(vkind, value, vline))
    if len(stack) > 1:
        raise DecodeError(f"line {stack[-1][2]}: unbalanced braces, this block is never closed")
    return root


def as_list(value: object) -> list:
    """A repeated field as a list, whether it occurred zero, one or many times."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# --- wire format: reading ------------------------------------------------------------------


def varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos``."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError(f"varint longer than 10 bytes at byte {pos}")


def fields(buf: memoryview, base: int = 0) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value): an int for varints, the bytes for everything else."""
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise DecodeError(f"field number 0 at byte {base + pos}")
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire in (1, 2, 5):
            size = {1: 8, 5: 4}.get(wire)
            if size is None:
                size, pos = varint(buf, pos)
            if size > len(buf) - pos:
                raise DecodeError(
                    f"field {field} at byte {base + pos} runs {size} bytes past the end"
                )
            value = buf[pos : pos + size]
            pos += size
        else:
            raise DecodeError(f"unsupported wire type {wire} at byte {base + pos}")
        yield field, wire, value


def signed(value: int) -> int:
    """A 64-bit varint read as two's complement (int32/int64 fields)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def text(value: int | memoryview) -> str:
    """A string field's value."""
    if isinstance(value, int):
        raise DecodeError("a string field holds a number")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("a string field is not UTF-8") from None


def ints(wire: int, value: int | memoryview) -> list[int]:
    """The values of a repeated integer field, packed or not."""
    if wire == 0:
        return [signed(value)]
    if wire != 2:
        raise DecodeError(f"an integer field has wire type {wire}")
    out, pos = [], 0
    while pos < len(value):
        n, pos = varint(value, pos)
        out.append(signed(n))
    return out


# --- wire format: writing ------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_bytes(field: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes, packed values or a sub-message)."""
    return encode_varint(field << 3 | 2) + encode_varint(len(payload)) + payload


def encode_int(field: int, value: int) -> bytes:
    return encode_varint(field << 3) + encode_varint(value)
