"""The Open Inference Protocol (KServe v2) routes, driven by Triton's own HTTP client: health,
metadata, every task's inference with binary and JSON tensors, and bad input always a 4xx."""

import http.client
import json
import struct

import numpy as np
import pytest

from deploy import service
from deploy.runtime import load
from tests.exports import FORECASTER, exported_models
from tests.test_service import InProcessServer

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
from tritonclient.utils import InferenceServerException  # noqa: E402

TEXTS = ["w1 w2 w3", "w4", "w5 w6"]
WINDOWS = np.stack([[[5.0 + i + k, 30.0 - i] for i in range(8)] for k in range(2)]).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    return exported_models(tmp_path_factory)


@pytest.fixture(scope="module")
def server(exported):
    limits = service.Limits(max_items=8, max_text_chars=2000, max_parallel=1)
    server = InProcessServer(service.create_app(exported.values(), limits, threads=1), limits)
    yield server
    server.close()


def triton_client(server):
    """Triton's HTTP client on the module's ``server`` (a fixture: ``client = pytest.fixture(...)(triton_client)``)."""
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


client = pytest.fixture(scope="module")(triton_client)


def text_input(texts: list[str], binary: bool) -> "httpclient.InferInput":
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return tensor


def infer(client, model: str, tensor, outputs: list[str], binary: bool, **parameters) -> dict[str, np.ndarray]:
    requested = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    result = client.infer(model, [tensor], outputs=requested, parameters=parameters or None)
    return {name: result.as_numpy(name) for name in outputs}


def strings(array: np.ndarray) -> list[str]:
    return [value.decode() if isinstance(value, bytes) else value for value in array.reshape(-1)]


def test_health_and_metadata(client, exported):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "rnnzoo"
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    for name in exported:
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    sentiment = client.get_model_metadata("sentiment")
    assert sentiment["versions"] == ["1"]
    assert sentiment["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["shape"] for o in sentiment["outputs"]} == {"label": [-1], "probabilities": [-1, 2]}
    forecaster = client.get_model_metadata("forecaster", "1")
    assert forecaster["inputs"][0] == {"name": "series", "datatype": "FP32", "shape": [-1, 8, 2]}
    assert forecaster["outputs"][0]["shape"] == [-1, FORECASTER["horizon"], 2]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="one version 1"):
        client.get_model_metadata("sentiment", "2")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_task_answers_as_its_predictor_does(client, exported, binary):
    predictors = {name: load(folder, threads=1) for name, folder in exported.items()}

    expected = predictors["sentiment"].classify(TEXTS)
    got = infer(client, "sentiment", text_input(TEXTS, binary), ["label", "probabilities"], binary)
    assert strings(got["label"]) == [record["label"] for record in expected]
    np.testing.assert_allclose(got["probabilities"], [list(r["probabilities"].values()) for r in expected], atol=1e-6)

    tags = infer(client, "tagger", text_input(TEXTS, binary), ["tags"], binary)["tags"]
    assert strings(tags) == [" ".join(record["tags"]) for record in predictors["tagger"].tag(TEXTS)]

    translations = infer(client, "translator", text_input(TEXTS, binary), ["translation"], binary, beam_size=2)
    assert strings(translations["translation"]) == predictors["translator"].translate(TEXTS, beam_size=2)

    continuation = infer(
        client, "lm", text_input(["w1 w2"], binary), ["continuation"], binary, max_new_tokens=5, temperature=0
    )["continuation"]
    assert strings(continuation) == [predictors["lm"].generate("w1 w2", max_new_tokens=5, temperature=0)]

    series = httpclient.InferInput("series", list(WINDOWS.shape), "FP32")
    series.set_data_from_numpy(WINDOWS, binary_data=binary)
    forecast = infer(client, "forecaster", series, ["forecast"], binary)["forecast"]
    expected = [record["forecast"] for record in predictors["forecaster"].forecast(WINDOWS.tolist())]
    assert forecast.shape == (2, FORECASTER["horizon"], 2)
    np.testing.assert_allclose(forecast, expected, atol=1e-4)


def test_all_outputs_come_back_binary_when_none_are_named(client):
    result = client.infer("sentiment", [text_input(TEXTS, True)])  # tritonclient asks for binary_data_output
    assert len(strings(result.as_numpy("label"))) == 3 and result.as_numpy("probabilities").shape == (3, 2)


def post(port: int, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


def binary_request(texts: list[bytes], size=None, header=None, count=None, data=None) -> tuple[bytes, dict]:
    """A binary BYTES request for ``texts``; the other arguments spoil it: the binary_data_size, the
    header's length, the shape's element count or the encoded data."""
    data = b"".join(struct.pack("<I", len(t)) + t for t in texts) if data is None else data
    tensor = {"name": "text", "shape": [len(texts) if count is None else count], "datatype": "BYTES"}
    tensor["parameters"] = {"binary_data_size": len(data) if size is None else size}
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head) if header is None else header)}


def json_request(data, shape=None, name="text", datatype="BYTES", **extra) -> bytes:
    tensor = {"name": name, "shape": shape if shape is not None else [len(data)], "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


BAD_REQUESTS = [
    ("malformed JSON", b'{"inputs": [', {}, 400),
    ("not an object", b"[1, 2]", {}, 400),
    ("arrays nested too deep", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, 400),
    (
        "data nested deep",
        b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": '
        + b"[" * 990
        + b'"w1"'
        + b"]" * 990
        + b"}]}",
        {},
        400,
    ),  # fmt: skip
    ("no inputs", b'{"inputs": []}', {}, 400),
    ("wrong input name", json_request(["w1"], name="texts"), {}, 400),
    ("wrong datatype", json_request([1.0], datatype="FP32"), {}, 400),
    ("shape and data differ", json_request(["w1", "w2"], shape=[3]), {}, 400),
    ("negative shape", json_request(["w1"], shape=[-1]), {}, 400),
    ("a number as text", json_request([5]), {}, 400),
    ("an empty text", json_request(["w1", "  "]), {}, 400),
    ("a lone surrogate", json_request(["w1 \udc80"]), {}, 400),
    ("unknown parameter", json_request(["w1"], parameters={"beam": 3}), {}, 400),
    ("too many texts", json_request(["w1"] * 9), {}, 413),
    ("a shape of 10**9 texts", *binary_request([b"w1"], count=10**9), 413),  # refused before the data is read
    ("a text over the limit", json_request(["w1 " * 700]), {}, 413),
    ("header length beyond the body", *binary_request([b"w1"], header=10**6), 400),
    ("header length not a number", *binary_request([b"w1"], header=-3), 400),
    ("binary size not what follows", *binary_request([b"w1"], size=99), 400),
    ("an element longer than the data", *binary_request([b"w1"], data=struct.pack("<I", 50) + b"w1"), 400),
    ("more elements than the shape", *binary_request([b"w1", b"w2"], count=1), 400),
    ("invalid UTF-8", *binary_request([b"\xff\xfe"]), 400),
]


@pytest.mark.parametrize(("what", "body", "headers", "status"), BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_v2_input_is_a_4xx_with_an_error(server, what, body, headers, status):
    got, answer = post(server.port, "/v2/models/sentiment/infer", body, headers)
    assert got == status and answer["error"], (what, answer)
    assert post(server.port, "/v2/models/sentiment/infer", json_request(["w1"]))[0] == 200  # the service goes on


def test_v2_errors_for_other_models_and_tasks(server):
    assert post(server.port, "/v2/models/nope/infer", json_request(["w1"]))[0] == 404
    status, answer = post(server.port, "/v2/models/translator/infer", json_request(["w1"], parameters={"beam_size": 0}))
    assert status == 400 and "beam_size" in answer["error"]
    window = json_request([1.0] * 16, [1, 8, 2], "series", "FP32")
    status, answer = post(server.port, "/v2/models/forecaster/infer", window)
    assert status == 200 and np.shape(answer["outputs"][0]["data"]) == (8,)  # 4 rows x 2 columns, flattened
    window = json_request([1.0] * 14, [1, 7, 2], "series", "FP32")
    assert post(server.port, "/v2/models/forecaster/infer", window)[0] == 400  # 7 rows where the model reads 8
