"""The Open Inference Protocol (KServe v2) routes, driven by Triton's own HTTP client: health,
metadata, every task's inference with binary and JSON tensors, and bad input always a 4xx."""

import http.client
import json
import struct

import numpy as np
import pytest

from deploy import service
from deploy.runtime import load
from deploy.tasks.forecasting import ForecasterPredictor
from tests.exports import FORECASTER, exported_models
from tests.test_service import InProcessServer, SlowCallbacks, loop_in_debug_mode

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
    ("header length a superscript digit", *binary_request([b"w1"], header="\u00b2"), 400),
    ("header length of superscripts", *binary_request([b"w1"], header="\u00b9\u00b3"), 400),
    ("header length of 5,000 digits", *binary_request([b"w1"], header="9" * 5000), 400),
    ("an output's parameters a list", json_request(["w1"], outputs=[{"name": "label", "parameters": [1]}]), {}, 400),
    ("an output's parameters a string", json_request(["w1"], outputs=[{"name": "label", "parameters": "x"}]), {}, 400),
    ("an output's name a list", json_request(["w1"], outputs=[{"name": ["label"]}]), {}, 400),
    ("an output's name an object", json_request(["w1"], outputs=[{"name": {"label": 1}}]), {}, 400),
    ("a shape of rank 0", json_request(["w1"], shape=[]), {}, 400),
    ("a shape of 600 sizes of 4,000 digits", json_request([], shape=[10**3999] * 600), {}, 400),
    ("more elements than the shape, all empty", *binary_request([b""] * 2_000_000, count=1), 400),
]
# The forecaster reads FP32 windows of 8 rows x 2 columns.
BAD_FORECASTS = [
    ("a zero-size dimension beside a large one", json_request([], [1, 4_000_000, 0], "series", "FP32"), 400),
    ("a dimension of 10**30", json_request([], [1, 10**30, 0], "series", "FP32"), 400),
    ("a dimension of 2**63", json_request([], [1, 2**63, 0], "series", "FP32"), 400),
    ("a boolean dimension", json_request([1.0] * 16, [True, 8, 2], "series", "FP32"), 400),
    ("a value of 10**400", json_request([10**400] + [1.0] * 15, [1, 8, 2], "series", "FP32"), 400),
    ("a value that is a string", json_request(["1"] + [1.0] * 15, [1, 8, 2], "series", "FP32"), 400),
    ("rank 4", json_request([1.0] * 16, [1, 8, 2, 1], "series", "FP32"), 400),
]


@pytest.mark.parametrize(("what", "body", "headers", "status"), BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_v2_input_is_a_4xx_with_an_error(server, what, body, headers, status):
    got, answer = post(server.port, "/v2/models/sentiment/infer", body, headers)
    assert got == status and answer["error"], (what, answer)
    assert post(server.port, "/v2/models/sentiment/infer", json_request(["w1"]))[0] == 200  # the service goes on


@pytest.mark.parametrize(("what", "body", "status"), BAD_FORECASTS, ids=[r[0] for r in BAD_FORECASTS])
def test_bad_v2_windows_are_a_4xx_that_says_what_the_model_reads(server, what, body, status):
    got, answer = post(server.port, "/v2/models/forecaster/infer", body)
    assert got == status and answer["error"], (what, answer)
    assert len(answer["error"]) < 200  # never the request's sizes or values echoed whole


ATTACKS = ["a shape of 600 sizes of 4,000 digits", "more elements than the shape, all empty"]


def test_huge_shapes_and_counts_are_refused_without_holding_the_event_loop(exported):
    """Refused before anything is computed from them: the loop's own report shows no request that held it."""
    limits = service.Limits(max_items=8)
    server = InProcessServer(loop_in_debug_mode(service.create_app([exported["forecaster"], exported["sentiment"]],
                                                                   limits, threads=1)), limits)  # fmt: skip
    attacks = [("sentiment", *request[1:3]) for request in BAD_REQUESTS if request[0] in ATTACKS]
    attacks += [("forecaster", body, {}) for what, body, _ in BAD_FORECASTS if "dimension" in what]
    try:
        with SlowCallbacks() as watch:
            for model, body, headers in attacks:

                def send(model=model, body=body, headers=headers):
                    assert post(server.port, f"/v2/models/{model}/infer", body, headers)[0] == 400

                assert watch.every_time(send) == [], model
    finally:
        server.close()


def test_v2_errors_for_other_models_and_tasks(server):
    assert post(server.port, "/v2/models/nope/infer", json_request(["w1"]))[0] == 404
    status, answer = post(server.port, "/v2/models/translator/infer", json_request(["w1"], parameters={"beam_size": 0}))
    assert status == 400 and "beam_size" in answer["error"]
    window = json_request([1.0] * 16, [1, 8, 2], "series", "FP32")
    status, answer = post(server.port, "/v2/models/forecaster/infer", window)
    assert status == 200 and np.shape(answer["outputs"][0]["data"]) == (8,)  # 4 rows x 2 columns, flattened
    window = json_request([1.0] * 14, [1, 7, 2], "series", "FP32")
    assert post(server.port, "/v2/models/forecaster/infer", window)[0] == 400  # 7 rows where the model reads 8


def test_a_forecast_beyond_float32_is_a_4xx_in_valid_json(server, monkeypatch):
    """Windows near float32's limit can overflow inside a network: there is no number to answer."""
    forecast_values = ForecasterPredictor.forecast_values

    def overflowing(predictor, windows, **limits):  # a network whose forecast overflows float32
        return forecast_values(predictor, windows, **limits) * np.float32(1e38)

    monkeypatch.setattr(ForecasterPredictor, "forecast_values", overflowing)
    window = WINDOWS[:1].tolist()
    status, text = server.request("POST", "/v1/models/forecaster/predict", json.dumps({"series": window}).encode())
    answer = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert status == 422 and "windows [0]" in answer["detail"]
    body = json_request(WINDOWS[:1].reshape(-1).tolist(), [1, 8, 2], "series", "FP32")
    status, answer = post(server.port, "/v2/models/forecaster/infer", body)
    assert status == 400 and "windows [0]" in answer["error"]


def test_generate_refuses_sequence_parameters(server):
    """A sequence's state is kept by infer; generate would drop it silently."""
    for route in ("generate", "generate_stream"):
        body = {"text_input": "w1", "parameters": {"sequence_id": 5, "sequence_start": True}}
        status, answer = post(server.port, f"/v2/models/lm/{route}", json.dumps(body).encode())
        assert status == 400 and "infer" in answer["error"]
