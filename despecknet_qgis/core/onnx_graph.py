"""Keep one output of an ONNX model and the nodes it needs, without the `onnx` package.

Despeckling needs only ONNX Runtime and numpy. ONNX Runtime computes every node of a
graph even when one output is fetched, so the speckle branch (FCN_noise) has to be cut out
of the graph before a session is made, or despeckling costs twice as much. The `onnx`
package, which would do that in a few lines, pulls protobuf and is often missing from
QGIS's Python; an ONNX file is a plain protobuf message, and cutting a branch out of it
needs only its wire format (https://protobuf.dev/programming-guides/encoding/):

- ModelProto: field 7 is the graph; every other field is copied unchanged;
- GraphProto: 1 node, 5 initializer, 12 output; every other field is copied unchanged;
- NodeProto: 1 input, 2 output (names); TensorProto: 8 name; ValueInfoProto: 1 name.

Nodes are walked backwards from the kept output; nodes, initializers and outputs it does
not need are dropped, every other byte stays as it was. The model file is never changed.
"""
from __future__ import annotations

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_OUTPUT = 1, 5, 12
NODE_INPUT, NODE_OUTPUT = 1, 2
TENSOR_NAME = 8
VALUE_INFO_NAME = 1


class WireFormatError(ValueError):
    """The bytes are not a protobuf message of the expected shape."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireFormatError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def fields(data: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """The records of a message: (field number, wire type, the record's bytes as stored, its payload)."""
    records, pos = [], 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireFormatError("field number 0")
        if wire == _VARINT:
            _, pos = _varint(data, pos)
            payload = b""
        elif wire == _FIXED64:
            pos += 8
            payload = b""
        elif wire == _FIXED32:
            pos += 4
            payload = b""
        elif wire == _BYTES:
            length, pos = _varint(data, pos)
            payload = data[pos:pos + length]
            pos += length
        else:
            raise WireFormatError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise WireFormatError("truncated message")
        records.append((number, wire, data[start:pos], payload))
    return records


def _strings(message: bytes, number: int) -> list[str]:
    return [payload.decode("utf-8") for n, w, _, payload in fields(message) if n == number and w == _BYTES]


def _name(message: bytes, number: int) -> str | None:
    names = _strings(message, number)
    return names[-1] if names else None


def _record(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _BYTES) + _encode_varint(len(payload)) + payload


def prune_graph(graph: bytes, output: str) -> bytes | None:
    """A GraphProto holding only `output` and what computes it; None when `output` is not an output."""
    records = fields(graph)
    outputs = [(r, _name(r[3], VALUE_INFO_NAME)) for r in records if r[0] == GRAPH_OUTPUT]
    if output not in [name for _, name in outputs]:
        return None
    nodes = [r for r in records if r[0] == GRAPH_NODE]
    needed = {output}
    kept = set()
    for index in range(len(nodes) - 1, -1, -1):
        payload = nodes[index][3]
        if needed.intersection(_strings(payload, NODE_OUTPUT)):
            kept.add(id(nodes[index]))
            needed.update(name for name in _strings(payload, NODE_INPUT) if name)
    out = bytearray()
    for record in records:
        number, _, raw, payload = record
        if number == GRAPH_NODE and id(record) not in kept:
            continue
        if number == GRAPH_OUTPUT and _name(payload, VALUE_INFO_NAME) != output:
            continue
        if number == GRAPH_INITIALIZER and _name(payload, TENSOR_NAME) not in needed:
            continue
        out += raw
    return bytes(out)


def keep_output(model: bytes, output: str) -> bytes | None:
    """The serialised ModelProto with only `output` and the nodes it needs; None when that is not possible.

    Raises:
        WireFormatError: `model` is not a protobuf message.
    """
    records = fields(model)
    graphs = [r for r in records if r[0] == MODEL_GRAPH and r[1] == _BYTES]
    if len(graphs) != 1:
        return None
    pruned = prune_graph(graphs[0][3], output)
    if pruned is None:
        return None
    out = bytearray()
    for record in records:
        out += _record(MODEL_GRAPH, pruned) if record is graphs[0] else record[2]
    return bytes(out)
