"""The Open Inference Protocol (KServe v2, Triton's HTTP API) beside ``/v1``, on the same service.

Routes (kserve's ``required_api.md``): ``GET /v2`` (server metadata), ``/v2/health/live``,
``/v2/health/ready``, ``/v2/models/{m}`` (model metadata), ``/v2/models/{m}/ready`` and
``POST /v2/models/{m}/infer``, each also under ``/versions/{v}``. Every model has the one version "1".
Extensions: a language model's requests may form a sequence (``sequence_id``, ``sequence_start``,
``sequence_end`` in the parameters: its state is kept between them, ``deploy.sequences``), and the
generating tasks answer Triton's ``generate`` and ``generate_stream`` (``{"text_input",
"parameters"}`` -> ``text_output``, the stream as server-sent events, ``deploy.events``).

Tensors: every text task reads the input ``text`` (``BYTES``, shape ``[n]``; a tagger's sentences
have their words separated by spaces), a forecaster ``series`` (``FP32``, ``[n, input_length,
columns]``). Outputs: classifier ``label`` (``BYTES [n]``) and ``probabilities`` (``FP32 [n,
labels]``), tagger ``tags`` (``BYTES [n]``, each sentence's tags separated by spaces), translator
``translation``, language model ``continuation`` (``BYTES [n]``), forecaster ``forecast`` (``FP32
[n, horizon, columns]``). The request's ``parameters`` carry the task's options (``beam_size``,
``max_new_tokens``, ``temperature``, ``top_k``, ``seed``).

Tensor data comes as JSON or with the binary tensor data extension, which ``tritonclient`` uses by
default: an ``Inference-Header-Content-Length`` header gives the size of the JSON that starts the
body, and each tensor with a ``binary_data_size`` parameter takes that many of the bytes after it,
in order (``BYTES`` elements as 4-byte little-endian lengths, each followed by its bytes;
``FP32`` little-endian). Outputs are binary when the request asks for it (``binary_data`` on an
output, or ``binary_data_output``). A request goes through the same prediction as ``/v1``
(``deploy.serving.ServedModel``), so every limit applies with the same status; malformed input
that ``/v1`` answers 422 is a 400 here, as the protocol says, and errors are ``{"error": "..."}``.
"""

import functools
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from deploy import sequences
from deploy.events import event_stream
from deploy.serving import ServedModel
from zoo.common import tasks

VERSION = "1"  # every model's one version
HEADER_LENGTH = "inference-header-content-length"
# Request parameters the protocol itself defines: not the task's options.
SEQUENCE_PARAMETERS = {"sequence_id", "sequence_start", "sequence_end"}
PROTOCOL_PARAMETERS = {"binary_data_output", *SEQUENCE_PARAMETERS}
DATATYPES = {"BYTES": None, "FP32": np.dtype("<f4")}
MAX_INT_DIGITS = 20  # a uint64 sequence_id


class BadRequest(ValueError):
    """A request that does not follow the protocol (400)."""


class TooMany(BadRequest):
    """More items than a request may hold (413), known from the shape before the data is read."""


@dataclass(frozen=True)
class Output:
    datatype: str  # "BYTES" or "FP32"
    values: Callable[[list[dict]], list]  # the task's records -> one value per record
    shape: Callable[[object], list[int]] = lambda predictor: [-1]  # the metadata's shape (-1: any size)


@dataclass(frozen=True)
class Tensors:
    """How one task's items and records are the protocol's tensors."""

    input: str
    datatype: str
    outputs: dict[str, Output]
    input_shape: Callable[[object], list[int]] = lambda predictor: [-1]


def values_of(key: str) -> Callable[[list[dict]], list]:
    """An output's values: each record's ``key``."""
    return lambda records: [record[key] for record in records]


def joined_values_of(key: str) -> Callable[[list[dict]], list]:
    """An output's values: each record's ``key``, a list of words, joined by spaces."""
    return lambda records: [" ".join(record[key]) for record in records]


def tensors(model: ServedModel) -> Tensors:
    return tasks.get(model.predictor.task).load("tensors")


def model_metadata(model: ServedModel) -> dict:
    spec, predictor = tensors(model), model.predictor
    return {
        "name": model.name,
        "versions": [VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": spec.input, "datatype": spec.datatype, "shape": spec.input_shape(predictor)}],
        "outputs": [
            {"name": name, "datatype": output.datatype, "shape": output.shape(predictor)}
            for name, output in spec.outputs.items()
        ],
    }


# -- reading a request -------------------------------------------------------------------------------------------


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The request's JSON object and the binary data after it."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        # ASCII digits only, and few of them: ``str.isdigit`` takes "²", and ``int`` refuses 5,000 digits.
        digits = header_length.strip()
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 19 and 0 < int(digits) <= len(body)):
            raise BadRequest(f"Inference-Header-Content-Length {brief(header_length)} is not a size within the body")
        json_part, binary = body[: int(digits)], body[int(digits) :]
    try:
        request = json.loads(json_part, parse_int=bounded_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # RecursionError: arrays nested too deep
        raise BadRequest(f"the request is not valid JSON ({err})") from None
    if not isinstance(request, dict):
        raise BadRequest("the request is not a JSON object")
    return request, binary


def bounded_int(digits: str) -> int:
    """A JSON integer of at most ``MAX_INT_DIGITS`` digits: reading one of thousands costs quadratic time,
    and no size, id or parameter of the protocol needs more."""
    if len(digits) > MAX_INT_DIGITS + 1:  # + 1: a minus sign
        raise ValueError(f"an integer of {len(digits)} digits; the protocol's have at most {MAX_INT_DIGITS}")
    return int(digits)


def brief(value) -> str:
    """A value from a request, shown in a message at a bounded cost: never a whole list or a huge number."""
    if isinstance(value, str):
        return repr(value[:40] + ("..." if len(value) > 40 else ""))
    if value is None or isinstance(value, bool | float) or (isinstance(value, int) and abs(value) < 2**64):
        return repr(value)
    return "a large integer" if isinstance(value, int) else f"a JSON {'array' if isinstance(value, list) else 'object'}"


def checked_shape(shape, spec: Tensors, predictor, max_items: int) -> list[int]:
    """The input's shape, checked against what the model reads (its rank first, then each size) before
    anything is computed from it: a size of 0 or of 10**30 must not make the server count, multiply or
    allocate by the others."""
    expected = spec.input_shape(predictor)  # -1: the items, any number
    if spec.datatype == "BYTES":
        ranks, wanted = (1, 2), "[n] (or [n, 1])"
    else:
        ranks, wanted = (len(expected),), str(expected).replace("-1", "n")
    if not isinstance(shape, list) or len(shape) not in ranks:
        rank = f"rank {len(shape)}" if isinstance(shape, list) else brief(shape)
        raise BadRequest(f"input {spec.input!r} has shape {wanted}, not {rank}")
    for i, size in enumerate(shape):
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"shape[{i}] of input {spec.input!r} is {brief(size)}, not a size (an integer >= 0)")
    if shape[0] > max_items:
        raise TooMany(f"{brief(shape[0])} items in {spec.input!r}; at most {max_items} per request")
    inner = [1] if spec.datatype == "BYTES" else expected[1:]
    if shape[1:] != inner[: len(shape) - 1]:
        raise BadRequest(f"input {spec.input!r} has shape {wanted}, not {[brief(size) for size in shape]}")
    return shape


def parse_bytes(data: bytes, count: int) -> list[bytes]:
    """``count`` elements of the binary ``BYTES`` encoding, which must use all of ``data``."""
    elements, offset = [], 0
    while offset < len(data):
        if len(elements) == count:  # stop here: 8 MiB of empty elements are two million of them
            raise BadRequest(f"binary BYTES data holds more elements than the shape's {count}")
        if offset + 4 > len(data):
            raise BadRequest("binary BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise BadRequest(f"binary BYTES element {len(elements)} says {size} bytes; fewer are left")
        elements.append(data[offset : offset + size])
        offset += size
    if len(elements) != count:
        raise BadRequest(f"binary BYTES data holds {len(elements)} elements; the shape says {count}")
    return elements


def flatten(data, depth: int) -> list:
    """JSON tensor data, flat or nested at most ``depth`` arrays deep (the shape's rank), in row-major order."""
    if not isinstance(data, list):
        raise BadRequest("tensor data must be a JSON array")
    if depth == 0:
        raise BadRequest("tensor data is nested deeper than its shape")
    flat = []
    for value in data:
        flat.extend(flatten(value, depth - 1) if isinstance(value, list) else [value])
    return flat


def read_input(request: dict, binary: bytes, spec: Tensors, predictor, max_items: int) -> list:
    """The task's items from the request's one input tensor (at most ``max_items``)."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"give one input tensor, {spec.input!r}")
    tensor = inputs[0]
    if tensor.get("name") != spec.input:
        raise BadRequest(f"unknown input {brief(tensor.get('name'))}; this model reads {spec.input!r}")
    if tensor.get("datatype") != spec.datatype:
        raise BadRequest(f"input {spec.input!r} is {spec.datatype}, not {brief(tensor.get('datatype'))}")
    shape = checked_shape(tensor.get("shape"), spec, predictor, max_items)
    count = math.prod(shape)  # every size is bounded now
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("an input's parameters must be a JSON object")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise BadRequest(f"binary_data_size {brief(size)}, but {len(binary)} bytes follow the JSON")
        if spec.datatype == "BYTES":
            values = parse_bytes(binary, count)
        elif len(binary) != 4 * count:
            raise BadRequest(f"{count} FP32 values are {4 * count} bytes, not {len(binary)}")
        else:
            values = np.frombuffer(binary, DATATYPES["FP32"]).tolist()
    else:
        if binary:
            raise BadRequest("binary data follows the JSON, but no input has a binary_data_size")
        values = flatten(tensor.get("data"), len(shape))
        if len(values) != count:
            raise BadRequest(f"input {spec.input!r} has {len(values)} values; its shape {shape} says {count}")
    if spec.datatype == "BYTES":
        return [text_of(value, i) for i, value in enumerate(values)]
    numbers = [number_of(value, i) for i, value in enumerate(values)]
    return np.asarray(numbers, dtype=np.float64).reshape(shape).tolist()


def number_of(value, index: int) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # a JSON integer of 400 digits
            pass
    raise BadRequest(f"value {index} of the input is {brief(value)}, not an FP32 number")


def text_of(value, index: int) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"text {index} is not UTF-8") from None
    if not isinstance(value, str):
        raise BadRequest(f"text {index} is {type(value).__name__}, not a string")
    return value


def options(request: dict, model: ServedModel, items: list) -> dict:
    """The task's options from the request's parameters, checked by the task's ``/v1`` schema."""
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("the request's parameters must be a JSON object")
    values = {name: value for name, value in parameters.items() if name not in PROTOCOL_PARAMETERS}
    schema, field = model.api.request, model.api.items_field
    known = set(schema.model_fields) - {field, "stream"}  # a stream is its own route: generate_stream
    unknown = sorted(set(values) - known)
    if unknown:
        takes = f"the parameters {', '.join(sorted(known))}" if known else "no parameters"
        raise BadRequest(f"unknown parameters {', '.join(key[:40] for key in unknown[:5])}; {model.name} takes {takes}")
    try:
        checked = schema.model_validate({field: items, **values})
    except ValidationError as err:
        wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:3])
        raise BadRequest(f"invalid parameters or input: {wrong}") from None
    return checked.model_dump(exclude={field, "stream"}, exclude_none=True)


def requested_outputs(request: dict, spec: Tensors) -> list[tuple[str, bool]]:
    """(name, as binary) of each output to answer: those asked for, else all."""
    everything_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return [(name, everything_binary) for name in spec.outputs]
    if not isinstance(asked, list) or not all(isinstance(output, dict) for output in asked):
        raise BadRequest("outputs must be a list of objects")
    chosen = []
    for output in asked:
        name, parameters = output.get("name"), output.get("parameters") or {}
        if not isinstance(name, str) or name not in spec.outputs:
            raise BadRequest(f"unknown output {brief(name)}; this model has {', '.join(spec.outputs)}")
        if not isinstance(parameters, dict):
            raise BadRequest(f"the parameters of output {name!r} must be a JSON object")
        chosen.append((name, bool(parameters.get("binary_data", everything_binary))))
    return chosen


# -- writing the answer ------------------------------------------------------------------------------------------


def encode(datatype: str, values: list) -> tuple[list[int], bytes, list]:
    """(shape, binary data, JSON data) of one output."""
    if datatype == "BYTES":
        encoded = [value.encode("utf-8") for value in values]
        binary = b"".join(struct.pack("<I", len(item)) + item for item in encoded)
        return [len(values)], binary, list(values)
    array = np.asarray(values, dtype=DATATYPES["FP32"])
    return list(array.shape), array.tobytes(), array.reshape(-1).tolist()


def answer(model: ServedModel, request: dict, records: list[dict], chosen: list[tuple[str, bool]]) -> Response:
    spec = tensors(model)
    outputs, binary = [], b""
    for name, as_binary in chosen:
        output = spec.outputs[name]
        shape, data, json_data = encode(output.datatype, output.values(records))
        tensor = {"name": name, "datatype": output.datatype, "shape": shape}
        if as_binary:
            tensor["parameters"] = {"binary_data_size": len(data)}
            binary += data
        else:
            tensor["data"] = json_data
        outputs.append(tensor)
    head = {"model_name": model.name, "model_version": VERSION, "outputs": outputs}
    if isinstance(request.get("id"), str):
        head["id"] = request["id"]
    head_bytes = json.dumps(head, allow_nan=False).encode()  # a bare NaN is not JSON: fail loudly instead
    if not binary:
        return Response(head_bytes, media_type="application/json")
    headers = {"Inference-Header-Content-Length": str(len(head_bytes))}
    return Response(head_bytes + binary, media_type="application/octet-stream", headers=headers)


def sequence_of(request: dict, model: ServedModel, items: list) -> tuple[sequences.Key, bool, bool] | None:
    """The sequence a request belongs to (its id, and whether it starts and ends it), or None."""
    parameters = request.get("parameters") or {}
    try:
        key = sequences.sequence_key(parameters)
    except sequences.SequenceError as err:
        raise BadRequest(str(err)) from None
    if key is None:
        return None
    if model.sequences is None:
        why = (
            "runs on several replicas, which the requests of a sequence would not all reach"
            if sequences.keeps_state(model.predictor)
            else "keeps no state between requests: sequences are for language models"
        )
        raise BadRequest(f"model {model.name!r} {why}")
    if len(items) != 1:
        raise BadRequest(f"a request in a sequence holds one text (shape [1]), not {len(items)}")
    return key, parameters.get("sequence_start", False), parameters.get("sequence_end", False)


async def in_sequence(model: ServedModel, key: sequences.Key, start: bool, end: bool, text: str, params: dict):
    """The record of ``text`` read into sequence ``key`` and continued (``ServedModel.continue_sequence``)."""
    try:
        sequence = model.sequences.open(key, start)
    except sequences.SequenceError as err:
        raise HTTPException(400, str(err)) from None
    except sequences.Full as err:
        raise HTTPException(429, str(err)) from None
    try:
        return await model.continue_sequence(sequence, start, text, params)
    finally:
        model.sequences.close(key, sequence, end)


def generate_input(body: dict, model: ServedModel) -> tuple[str, dict]:
    """The text and the task's options of a ``generate`` request (``{"text_input", "parameters"}``)."""
    if model.api.stream is None:
        raise BadRequest(f"model {model.name!r} ({model.predictor.task}) does not generate text; use its infer")
    unknown = sorted(set(body) - {"id", "text_input", "parameters"})
    if unknown:
        raise BadRequest(f"unknown fields {', '.join(key[:40] for key in unknown[:5])}; send text_input and parameters")
    parameters = body.get("parameters")
    if isinstance(parameters, dict) and SEQUENCE_PARAMETERS & set(parameters):
        raise BadRequest("generate keeps no sequence: send a sequence's requests to infer")
    text = body.get("text_input")
    if not isinstance(text, str):
        raise BadRequest("give text_input, a string")
    return text, options(body, model, [text])


def text_output(model: ServedModel, record: dict) -> str:
    """A generating task's text: its one output (a continuation, a translation)."""
    (output,) = tensors(model).outputs.values()
    return output.values([record])[0]


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def add_routes(app: FastAPI, served: dict[str, ServedModel]) -> None:
    """The protocol's routes on the service's ``app`` for its models ``served`` (by name)."""
    try:
        server_version = version("rnnzoo")
    except PackageNotFoundError:  # run from a source tree
        server_version = "0"

    def find(name: str, version: str | None) -> ServedModel:
        if name not in served:
            raise HTTPException(404, f"unknown model {name!r}; available: {', '.join(sorted(served))}")
        if version not in (None, VERSION):
            raise HTTPException(404, f"model {name!r} has the one version {VERSION}, not {version!r}")
        return served[name]

    def protocol_errors(route):
        """Answer an ``HTTPException`` as the protocol's ``{"error": ...}``; what ``/v1`` answers 422
        (malformed input) is a 400 here, as the protocol says."""

        @functools.wraps(route)  # FastAPI reads the route's parameters through it
        async def wrapped(*args, **kwargs):
            try:
                return await route(*args, **kwargs)
            except HTTPException as err:
                return error(400 if err.status_code == 422 else err.status_code, str(err.detail))

        return wrapped

    extensions = ["binary_tensor_data", "generate"]
    if any(model.sequences is not None for model in served.values()):
        extensions += ["sequence", "sequence(string_id)"]

    @app.get("/v2", tags=["v2"])
    async def server_metadata() -> dict:
        return {"name": "rnnzoo", "version": server_version, "extensions": extensions}

    @app.get("/v2/health/live", tags=["v2"])
    async def server_live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"])
    async def server_ready():
        ready = all(model.ready for model in served.values())
        return {"ready": True} if ready else error(503, "models are not ready")

    async def metadata(name: str, version: str | None = None):
        return model_metadata(find(name, version))

    async def model_ready(name: str, version: str | None = None):
        model = find(name, version)
        return {"name": name, "ready": True} if model.ready else error(503, f"model {name!r} is not ready")

    async def infer(name: str, request: Request, version: str | None = None):
        model = find(name, version)
        spec = tensors(model)
        try:
            body, binary = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
            items = read_input(body, binary, spec, model.predictor, model.limits.max_items)
            if not items:
                raise BadRequest(f"input {spec.input!r} is empty")
            params = options(body, model, items)
            chosen = requested_outputs(body, spec)
            sequence = sequence_of(body, model, items)
        except BadRequest as err:
            raise HTTPException(413 if isinstance(err, TooMany) else 400, str(err)) from None
        if sequence is None:
            records = await model.predict(items, params)
        else:
            records = [await in_sequence(model, *sequence, items[0], params)]
        return answer(model, body, records, chosen)

    async def generate_request(name: str, request: Request, version: str | None) -> tuple[ServedModel, str, dict]:
        model = find(name, version)
        try:
            body, _ = split_body(await request.body(), None)
            return model, *generate_input(body, model)
        except BadRequest as err:
            raise HTTPException(400, str(err)) from None

    async def generate(name: str, request: Request, version: str | None = None):
        model, text, params = await generate_request(name, request, version)
        (record,) = await model.predict([text], params)
        return {"model_name": name, "model_version": VERSION, "text_output": text_output(model, record)}

    async def generate_stream(name: str, request: Request, version: str | None = None):
        model, text, params = await generate_request(name, request, version)
        head = {"model_name": name, "model_version": VERSION}
        return await event_stream(model.stream(text, params), lambda piece: head | {"text_output": piece})

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.get(prefix, tags=["v2"])(protocol_errors(metadata))
        app.get(prefix + "/ready", tags=["v2"])(protocol_errors(model_ready))
        app.post(prefix + "/infer", tags=["v2"])(protocol_errors(infer))
        app.post(prefix + "/generate", tags=["v2"])(protocol_errors(generate))
        app.post(prefix + "/generate_stream", tags=["v2"])(protocol_errors(generate_stream))
