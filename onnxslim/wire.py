"""Read an inline ``.onnx`` file without copying its weights into memory.

``onnx.load`` parses every weight into the ModelProto (and holds the file's bytes while it
does): two copies of the weights at peak. :func:`parse_lazily` walks the protobuf wire format
over a memory map instead and replaces each large main-graph initializer that stores
``raw_data`` by an *external-data reference into the .onnx file itself* (offset and length of
its raw bytes), which onnx-ir then reads lazily like any external tensor.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

import onnx

#: Initializers smaller than this stay inline (not worth a reference).
LAZY_MIN_BYTES = 4096

_LEN = 2


class WireError(ValueError):
    """Not the protobuf structure we expect; the caller falls back to a full parse."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(field: int, wire_type: int = _LEN) -> bytes:
    return encode_varint((field << 3) | wire_type)


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field, wire type, payload start, payload end, record start) for each field in a message."""
    pos = start
    while pos < end:
        record = pos
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = _varint(buf, pos, end)
        elif wire == 1:
            stop = pos + 8
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            stop = pos + length
        elif wire == 5:
            stop = pos + 4
        else:
            raise WireError(f"unsupported wire type {wire}")
        if stop > end:
            raise WireError("field runs past the end of its message")
        yield field, wire, pos, stop, record
        pos = stop


_RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION = 9, 13, 14


def _placeholder(buf: memoryview, start: int, end: int, location: str) -> bytes | None:
    """A TensorProto pointing at its own raw bytes in the file, or None to keep it inline."""
    header = bytearray()
    raw = None
    for field, wire, ps, pe, rs in _fields(buf, start, end):
        if field == _RAW_DATA and wire == _LEN:
            raw = (ps, pe)
        elif field in (_EXTERNAL_DATA, _DATA_LOCATION):
            return None  # already external
        else:
            header += buf[rs:pe]
    if raw is None:
        return None
    tensor = onnx.TensorProto()
    tensor.ParseFromString(bytes(header))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(raw[0])), ("length", str(raw[1] - raw[0]))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor.SerializeToString()


def parse_lazily(path: Path) -> tuple[onnx.ModelProto, int]:
    """The model with large raw-data initializers as references into ``path``; and their count."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = memoryview(mm)
        try:
            model_rest = bytearray()
            graph_rest = bytearray()
            lazy = 0
            for field, wire, ps, pe, rs in _fields(buf, 0, len(buf)):
                if field != 7 or wire != _LEN:  # ModelProto.graph
                    model_rest += buf[rs:pe]
                    continue
                for g_field, g_wire, gs, ge, grs in _fields(buf, ps, pe):
                    if g_field == 5 and g_wire == _LEN and ge - gs >= LAZY_MIN_BYTES:  # GraphProto.initializer
                        placeholder = _placeholder(buf, gs, ge, path.name)
                        if placeholder is not None:
                            graph_rest += tag(5) + encode_varint(len(placeholder)) + placeholder
                            lazy += 1
                            continue
                    graph_rest += buf[grs:ge]
            model_rest += tag(7) + encode_varint(len(graph_rest)) + graph_rest
        finally:
            buf.release()
    proto = onnx.ModelProto()
    proto.ParseFromString(bytes(model_rest))
    return proto, lazy
