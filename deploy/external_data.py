"""Refuse ONNX files whose tensors live in other files ("external data"), before onnxruntime opens them.

A tensor of an ONNX graph may keep its values in another file, named by a ``location`` relative to
the graph. onnxruntime 1.17-1.23 followed such a location out of the export folder (``../../``, an
absolute path, a symlink): another file's bytes became weights. rnnzoo's exports never write
external data (every graph is far under protobuf's 2 GB limit), so any external tensor means the
folder was not written by ``rnnzoo export`` and is refused, whatever onnxruntime would do with it.

The file is parsed by protobuf (``onnx``'s classes), not by a reader of our own, and every tensor
of every message is checked: graph initializers, sparse tensors, node attributes, the subgraphs of
``Loop``/``Scan``/``If``, functions. Protobuf's parsers do not all read a crafted file alike: a
field tag written as a 5-byte varint is fields 13/14 to onnxruntime's C++ parser (it keeps a tag's
low 32 bits), an error to the ``upb`` parser and an unknown field to the pure-Python one
(``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``). So a file that does not parse, or holds any
field this ``onnx`` does not know, is refused too: no field onnxruntime reads escapes the check.
"""

from pathlib import Path

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from zoo.common.formats import FormatError


def check_no_external_data(path: Path) -> None:
    """Raise ``FormatError`` if any tensor of the ONNX file at ``path`` keeps its data in another file."""
    import onnx  # on first use, not on ``import deploy``: it takes 50 ms (ml_dtypes 0.5) to 0.6 s (ml_dtypes 0.7)

    model = onnx.ModelProto()
    try:
        model.ParseFromString(Path(path).read_bytes())
    except (DecodeError, RecursionError):
        raise FormatError(f"{path}: not a valid ONNX file; export the model again") from None
    for message in _messages(model):
        if UnknownFieldSet(message):
            raise FormatError(
                f"{path}: its {message.DESCRIPTOR.name} has fields onnx {onnx.__version__} does not know; "
                "export the model again"
            )
        external = isinstance(message, onnx.TensorProto) and (
            message.data_location == onnx.TensorProto.EXTERNAL or len(message.external_data)
        )
        if external:
            raise FormatError(
                f"{path}: a tensor keeps its values in another file (ONNX external data), which rnnzoo exports "
                "never do: refusing to load it (export the model again)"
            )


def _messages(message: Message):
    """``message`` and every message inside it, depth first."""
    yield message
    for field, value in message.ListFields():
        if field.message_type is not None:
            for child in [value] if isinstance(value, Message) else value:
                yield from _messages(child)
