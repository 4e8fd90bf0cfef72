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


# Fields read by conv_chain (onnx.proto): NodeProto 4 op_type, 5 attribute; AttributeProto
# 1 name, 3 i, 8 ints; TensorProto 1 dims, 2 data_type, 4 float_data, 9 raw_data,
# 14 data_location; GraphProto 11 input.
NODE_OP_TYPE, NODE_ATTRIBUTE = 4, 5
ATTRIBUTE_NAME, ATTRIBUTE_INT, ATTRIBUTE_INTS = 1, 3, 8
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_FLOAT_DATA, TENSOR_RAW_DATA, TENSOR_DATA_LOCATION = 1, 2, 4, 9, 14
GRAPH_INPUT = 11
_FLOAT = 1
_EXTERNAL = 1  # TensorProto.DataLocation


def _integers(message: bytes, number: int) -> list[int]:
    """The values of a repeated (packed or not) or single integer field."""
    values = []
    for n, wire, raw, payload in fields(message):
        if n != number:
            continue
        if wire == _VARINT:
            _, pos = _varint(raw, 0)  # skip the key
            values.append(_varint(raw, pos)[0])
        elif wire == _BYTES:
            pos = 0
            while pos < len(payload):
                value, pos = _varint(payload, pos)
                values.append(value)
    return values


def _float_tensor(message: bytes):
    """A float TensorProto as a numpy array; None for any other type or external data."""
    import numpy as np

    if _integers(message, TENSOR_DATA_TYPE) != [_FLOAT] or _integers(message, TENSOR_DATA_LOCATION) not in ([], [0]):
        return None
    dims = _integers(message, TENSOR_DIMS)
    records = fields(message)
    raw = [p for n, w, _, p in records if n == TENSOR_RAW_DATA and w == _BYTES]
    packed = [p for n, w, _, p in records if n == TENSOR_FLOAT_DATA and w == _BYTES]
    data = raw[-1] if raw else b"".join(packed)
    values = np.frombuffer(data, dtype="<f4")
    if values.size != int(np.prod(dims)):
        return None
    return values.reshape(dims).astype(np.float32)


def external_tensors(model: bytes) -> list[str]:
    """The names of the graph's initializers whose values another file holds (ONNX external data).

    Raises:
        WireFormatError: `model` is not a protobuf message.
    """
    names = []
    for graph in [p for n, w, _, p in fields(model) if n == MODEL_GRAPH and w == _BYTES]:
        for n, w, _, payload in fields(graph):
            if n == GRAPH_INITIALIZER and w == _BYTES and _integers(payload, TENSOR_DATA_LOCATION) == [_EXTERNAL]:
                names.append(_name(payload, TENSOR_NAME) or "?")
    return names


def conv_chain(model: bytes, output: str):
    """The layers computing `output` when they are a plain chain from the graph's input of
    same-size convolutions (odd square kernels, padding k // 2, stride, dilation and group 1),
    each optionally followed by Relu: [(weight, bias, relu), ...] from the input on, as float32
    arrays. None for any other graph: a caller then keeps the general ONNX Runtime path.

    Raises:
        WireFormatError: `model` is not a protobuf message.
    """
    import numpy as np

    graphs = [p for n, w, _, p in fields(model) if n == MODEL_GRAPH and w == _BYTES]
    if len(graphs) != 1:
        return None
    records = fields(graphs[0])
    inputs = [_name(p, VALUE_INFO_NAME) for n, _, _, p in records if n == GRAPH_INPUT]
    tensors = {_name(p, TENSOR_NAME): p for n, _, _, p in records if n == GRAPH_INITIALIZER}
    graph_inputs = [name for name in inputs if name not in tensors]
    producers = {}
    for n, _, _, payload in records:
        if n == GRAPH_NODE:
            for name in _strings(payload, NODE_OUTPUT):
                producers[name] = payload
    if len(graph_inputs) != 1:
        return None
    layers, name, relu = [], output, False
    while name != graph_inputs[0]:
        node = producers.get(name)
        if node is None:
            return None
        op, node_inputs = _name(node, NODE_OP_TYPE), _strings(node, NODE_INPUT)
        if op == "Relu" and not relu and len(node_inputs) == 1:
            relu, name = True, node_inputs[0]
            continue
        if op != "Conv" or len(node_inputs) not in (2, 3):
            return None
        weight = _float_tensor(tensors.get(node_inputs[1], b""))
        if weight is None or weight.ndim != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
            return None
        if len(node_inputs) == 3 and node_inputs[2]:
            bias = _float_tensor(tensors.get(node_inputs[2], b""))
            if bias is None or bias.shape != (weight.shape[0],):
                return None
        else:
            bias = np.zeros(weight.shape[0], np.float32)
        half = weight.shape[2] // 2
        expected = {"kernel_shape": [weight.shape[2]] * 2, "pads": [half] * 4, "strides": [1, 1], "dilations": [1, 1],
                    "group": [1]}
        seen = set()
        for attribute in [p for n, _, _, p in fields(node) if n == NODE_ATTRIBUTE]:
            key = _name(attribute, ATTRIBUTE_NAME)
            values = _integers(attribute, ATTRIBUTE_INTS) or _integers(attribute, ATTRIBUTE_INT)
            if key not in expected or values != expected[key]:
                return None  # auto_pad, asymmetric pads, strides...: not a same-size convolution
            seen.add(key)
        if half and "pads" not in seen:
            return None  # ONNX's default padding is 0: the output is smaller than the input
        layers.append((weight, bias, relu))
        relu, name = False, node_inputs[0]
    if relu or not layers:
        return None
    layers.reverse()
    return layers
