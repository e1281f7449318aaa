"""Streamed generation: ``/v1`` with ``"stream": true`` and the Open Inference Protocol's ``generate`` and
``generate_stream``, read with an SSE client. The pieces add up to the answer the same request gets
unstreamed; a refusal is a status, an error after the 200 the last event, and a client that leaves
stops the decoding."""

import json
import re
import socket
import time

import pytest

from deploy import service
from tests.exports import exported_models
from tests.test_service import HANG, InProcessServer, StepWatch, metric

httpx = pytest.importorskip("httpx")
httpx_sse = pytest.importorskip("httpx_sse", reason="httpx-sse is a dev dependency")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    return exported_models(tmp_path_factory)


@pytest.fixture(scope="module")
def server(exported):
    limits = service.Limits(max_parallel=1, max_text_chars=100)
    folders = [exported[name] for name in ("lm", "translator", "sentiment")]
    server = InProcessServer(service.create_app(folders, limits, threads=1), limits)
    yield server
    server.close()


def events(server, path: str, request: dict) -> list[dict]:
    with httpx.Client(base_url=server.url, timeout=HANG) as client:
        with httpx_sse.connect_sse(client, "POST", path, json=request) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            return [json.loads(event.data) for event in source.iter_sse()]


LM = {"max_new_tokens": 7, "temperature": 1.0, "seed": 5}


@pytest.mark.parametrize(
    ("model", "options", "field"),
    [
        ("lm", LM, "continuation"),
        ("lm", {"max_new_tokens": 5, "temperature": 0}, "continuation"),
        ("lm", {"max_new_tokens": 5, "top_k": 3, "seed": 1}, "continuation"),
        ("translator", {"beam_size": 1}, "translation"),
    ],
    ids=["lm-sampled", "lm-greedy", "lm-top-k", "translator-greedy"],
)
def test_a_v1_stream_adds_up_to_the_unstreamed_answer(server, model, options, field):
    items = "prompts" if model == "lm" else "texts"
    status, answer = server.post(f"/v1/models/{model}/predict", {items: ["w1 w2 w3"], **options})
    assert status == 200
    streamed = events(server, f"/v1/models/{model}/predict", {items: ["w1 w2 w3"], **options, "stream": True})
    assert len(streamed) > 1 and all(set(event) == {"delta"} for event in streamed)
    assert "".join(event["delta"] for event in streamed) == answer["predictions"][0][field]


@pytest.mark.parametrize("model", ["lm", "translator"])
def test_v2_generate_and_its_stream_answer_as_infer(server, model):
    parameters = LM if model == "lm" else {"beam_size": 1}
    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["w4 w5"]}]}
    status, inferred = server.post(f"/v2/models/{model}/infer", request | {"parameters": parameters})
    assert status == 200
    generate = {"text_input": "w4 w5", "parameters": parameters}
    status, generated = server.post(f"/v2/models/{model}/generate", generate)
    assert status == 200 and generated["model_name"] == model and generated["model_version"] == "1"
    assert generated["text_output"] == inferred["outputs"][0]["data"][0]
    streamed = events(server, f"/v2/models/{model}/versions/1/generate_stream", generate)
    assert {event["model_name"] for event in streamed} == {model}
    assert "".join(event["text_output"] for event in streamed) == generated["text_output"]


@pytest.mark.parametrize(
    ("path", "request_body", "status", "message"),
    [
        ("/v1/models/lm/predict", {"prompts": ["w1", "w2"], "stream": True}, 422, "a stream answers one"),
        ("/v1/models/lm/predict", {"prompts": ["w1 " * 60], "stream": True}, 413, "exceed 100 characters"),
        ("/v1/models/lm/predict", {"prompts": ["w1"], "temperature": -1, "stream": True}, 422, "temperature"),
        ("/v1/models/translator/predict", {"texts": ["w1"], "beam_size": 2, "stream": True}, 422, "greedy"),
        ("/v1/models/translator/predict", {"texts": ["w1"], "attention": True, "stream": True}, 422, "greedy"),
        ("/v2/models/sentiment/generate_stream", {"text_input": "w1"}, 400, "does not generate text"),
        ("/v2/models/lm/generate_stream", {"text_input": 3}, 400, "text_input, a string"),
        ("/v2/models/lm/generate_stream", {"prompt": "w1"}, 400, "unknown fields prompt"),
        ("/v2/models/lm/generate_stream", {"text_input": "w1", "parameters": {"stream": True}}, 400, "unknown param"),
        ("/v2/models/lm/generate", {"text_input": "w1", "parameters": {"top_k": 0}}, 400, "top_k"),
        ("/v2/models/lm/generate", {"text_input": "\udc80"}, 400, "surrogate"),
        ("/v2/models/lm/generate", [1], 400, "not a JSON object"),
        ("/v2/models/nope/generate", {"text_input": "w1"}, 404, "unknown model"),
    ],
)
def test_a_refused_stream_is_a_status_with_a_message(server, path, request_body, status, message):
    answer_status, body = server.post(path, request_body)
    assert answer_status == status, body
    assert re.search(message, json.dumps(body)), body


def test_an_error_after_the_200_is_the_streams_last_event(exported, monkeypatch):
    watch = StepWatch(monkeypatch)  # the third step waits: the request times out inside the stream
    limits = service.Limits(max_parallel=1, request_timeout_s=1)
    server = InProcessServer(service.create_app([exported["lm"]], limits, threads=1), limits)
    try:
        streamed = events(server, "/v1/models/lm/predict", {"prompts": ["w1"], "max_new_tokens": 100, "stream": True})
        # The prompt, the tokens before the held step, then the end.
        assert [set(event) for event in streamed] == [{"delta"}] * 3 + [{"error"}]
        assert "request_timeout_s" in streamed[-1]["error"]
        watch.release.set()
        assert watch.stopped.wait(HANG) and watch.calls == 3
    finally:
        watch.release.set()
        server.close()


def test_a_client_that_leaves_a_stream_stops_its_decoding(exported, monkeypatch):
    watch = StepWatch(monkeypatch)
    limits = service.Limits(max_parallel=1)
    server = InProcessServer(service.create_app([exported["lm"]], limits, threads=1), limits)
    try:
        body = json.dumps({"text_input": "w1", "parameters": {"max_new_tokens": 1000}}).encode()
        head = b"POST /v2/models/lm/generate_stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        with socket.create_connection(("127.0.0.1", server.port)) as gone:
            gone.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            assert watch.third.wait(HANG)
            assert gone.recv(4096).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + HANG  # until the service has seen the client go (a guard, not a measure)
        while not metric(server.get("/metrics")[1], 'rnnzoo_requests_total{model="lm",status="499"}'):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        watch.release.set()
        assert watch.stopped.wait(HANG) and watch.calls == 3  # none ran after the client left
        status, _ = server.post("/v2/models/lm/generate", {"text_input": "w1", "parameters": {"max_new_tokens": 2}})
        assert status == 200
    finally:
        watch.release.set()
        server.close()
