"""Refuse ONNX files whose tensors live in other files ("external data"), before onnxruntime opens them.

A tensor of an ONNX graph may keep its values in another file, named by a ``location`` relative to
the graph. onnxruntime 1.17-1.23 followed such a location out of the export folder (``../../``, an
absolute path, a symlink): another file's bytes became weights. rnnzoo's exports never write
external data (every graph is far under protobuf's 2 GB limit), so any external tensor means the
folder was not written by ``rnnzoo export`` and is refused, whatever onnxruntime would do with it.

The check reads the protobuf wire format itself, since the base install (the torch-free runtime)
has no ``onnx`` package: it walks the messages that can hold tensors (graphs, their initializers,
node attributes and the subgraphs of ``Loop``/``Scan``/``If``, functions) and skips every other
field by its length, so it costs a fraction of loading the model.
"""

from pathlib import Path

from zoo.formats import FormatError

# Field numbers of onnx.proto (onnx/onnx.proto3) on the paths from a model to its tensors.
MODEL_GRAPH, MODEL_FUNCTIONS = 7, 25
GRAPH_NODES, GRAPH_INITIALIZERS, GRAPH_SPARSE_INITIALIZERS = 1, 5, 15
FUNCTION_NODES = 7
NODE_ATTRIBUTES = 5
ATTRIBUTE_TENSOR, ATTRIBUTE_GRAPH, ATTRIBUTE_TENSORS, ATTRIBUTE_GRAPHS = 5, 6, 10, 11
ATTRIBUTE_SPARSE_TENSOR, ATTRIBUTE_SPARSE_TENSORS = 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION, EXTERNAL = 13, 14, 1
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
MAX_DEPTH = 64  # nested subgraphs; deeper is no graph rnnzoo writes


class _Message:
    def __init__(self, data: memoryview, path: Path):
        self.data, self.path = data, path

    def malformed(self) -> FormatError:
        return FormatError(f"{self.path}: not a valid ONNX file; export the model again")

    def varint(self, i: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if i >= len(self.data) or shift > 63:
                raise self.malformed()
            byte = self.data[i]
            value |= (byte & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if byte < 0x80:
                return value, i

    def fields(self, start: int, end: int):
        """``(field number, wire type, value)`` of the message in ``data[start:end]``; a length-delimited
        value is its ``(start, end)``."""
        i = start
        while i < end:
            key, i = self.varint(i)
            field, wire = key >> 3, key & 7
            if wire == VARINT:
                value, i = self.varint(i)
            elif wire == LENGTH:
                length, i = self.varint(i)
                value = (i, i + length)
                i += length
            elif wire in (FIXED64, FIXED32):
                value, i = None, i + (8 if wire == FIXED64 else 4)
            else:
                raise self.malformed()
            if i > end:
                raise self.malformed()
            yield field, wire, value

    def children(self, span: tuple[int, int], wanted: set[int]):
        for field, wire, value in self.fields(*span):
            if field in wanted and wire == LENGTH:
                yield field, value


def check_no_external_data(path: Path) -> None:
    """Raise ``FormatError`` if any tensor of the ONNX file at ``path`` keeps its data in another file."""
    message = _Message(memoryview(Path(path).read_bytes()), Path(path))

    def tensor(span):
        for field, wire, value in message.fields(*span):
            external = field == TENSOR_DATA_LOCATION and wire == VARINT and value == EXTERNAL
            if external or field == TENSOR_EXTERNAL_DATA:
                raise FormatError(
                    f"{path}: a tensor keeps its values in another file (ONNX external data), which rnnzoo exports "
                    "never do: refusing to load it (export the model again)"
                )

    def sparse(span):
        for _, value in message.children(span, {SPARSE_VALUES, SPARSE_INDICES}):
            tensor(value)

    def nodes(span, field_number, depth):
        for _, node in message.children(span, {field_number}):
            for _, attribute in message.children(node, {NODE_ATTRIBUTES}):
                for field, value in message.children(attribute, set(ATTRIBUTE_WALK)):
                    ATTRIBUTE_WALK[field](value, depth)

    def graph(span, depth=0):
        if depth > MAX_DEPTH:
            raise message.malformed()
        for field, value in message.children(span, {GRAPH_NODES, GRAPH_INITIALIZERS, GRAPH_SPARSE_INITIALIZERS}):
            if field == GRAPH_INITIALIZERS:
                tensor(value)
            elif field == GRAPH_SPARSE_INITIALIZERS:
                sparse(value)
        nodes(span, GRAPH_NODES, depth)

    ATTRIBUTE_WALK = {
        ATTRIBUTE_TENSOR: lambda value, depth: tensor(value),
        ATTRIBUTE_TENSORS: lambda value, depth: tensor(value),
        ATTRIBUTE_SPARSE_TENSOR: lambda value, depth: sparse(value),
        ATTRIBUTE_SPARSE_TENSORS: lambda value, depth: sparse(value),
        ATTRIBUTE_GRAPH: lambda value, depth: graph(value, depth + 1),
        ATTRIBUTE_GRAPHS: lambda value, depth: graph(value, depth + 1),
    }
    whole = (0, len(message.data))
    for field, value in message.children(whole, {MODEL_GRAPH, MODEL_FUNCTIONS}):
        if field == MODEL_GRAPH:
            graph(value)
        else:
            nodes(value, FUNCTION_NODES, 0)
