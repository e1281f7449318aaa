"""The HTTP service, started for real on 127.0.0.1 in a subprocess that cannot import torch.

The tests of what waiting does (micro-batching, a full queue, timeouts, a client that leaves) run
the service in this process instead, with a predictor that answers only once the test lets it
(``Gate``) and a micro-batcher that reports what it was given (``Arrivals``): the test orders
events by waiting for them, never by sleeping, and asserts no durations.
"""

import asyncio
import gc
import http.client
import json
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import uvicorn

from deploy import service
from deploy.runtime import Cancelled, load, sub_batches
from deploy.tasks.language_model import LanguageModelPredictor
from tests.conftest import REPO, WORDS
from tests.exports import exported_models
from zoo.common.decoding import PROMPT_CHUNK
from zoo.common.predict import TooLarge
from zoo.common.predict.translation import TranslationOptions
from zoo.common.text import MAX_WORD_CHARACTERS

SENTIMENT = "/v1/models/sentiment/predict"
# How long a test waits for what must happen before it fails instead of hanging (a guard, never a measure).
HANG = 60


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    return exported_models(tmp_path_factory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    """Requests to a service listening on 127.0.0.1:``port``."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def get(self, path: str) -> tuple[int, str]:
        return self.request("GET", path)

    def headers(self, path: str) -> dict[str, str]:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return {name.lower(): value for name, value in response.headers.items()}

    def post(self, path: str, payload) -> tuple[int, dict]:
        status, text = self.request("POST", path, encode(payload))
        return status, json.loads(text)


class Server(Endpoint):
    """``rnnzoo serve`` in a subprocess that cannot import torch."""

    def __init__(self, folders, *options: str):
        self.port = free_port()
        arguments = ["serve", *map(str, folders), "--port", str(self.port), "--threads", "1", *options]
        script = (
            "import sys; sys.modules['torch'] = None\n"  # the service must not need torch
            "from lightning_modules.cli import main\n"
            f"main({arguments!r})\n"
        )
        self.log = tempfile.TemporaryFile("w+")  # a pipe nobody reads could fill up and stall the server
        self.process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=self.log, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise AssertionError(f"the server exited: {self.log.read()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the server did not come up in 60 s")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


class InProcessServer(Endpoint):
    """The service's ``app`` under uvicorn on a thread of this process, serving a socket it is handed."""

    def __init__(self, app, limits: service.Limits | None = None):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        up = threading.Event()

        class Uvicorn(uvicorn.Server):
            async def startup(self, sockets=None):
                try:
                    await super().startup(sockets)
                finally:
                    up.set()

        self.server = Uvicorn(service.uvicorn_config(app, limits or service.Limits()))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        assert up.wait(HANG) and self.server.started, "the in-process server did not start"

    def close(self):
        self.server.should_exit = True
        self.thread.join(HANG)
        self.socket.close()


def loop_in_debug_mode(app):
    """``app`` on an event loop in asyncio's debug mode (turned on at start-up), in which the loop itself
    reports, on the ``asyncio`` logger, every callback that held it over ``slow_callback_duration`` (0.1 s)."""

    async def debugged(scope, receive, send):
        asyncio.get_running_loop().set_debug(True)
        await app(scope, receive, send)

    return debugged


class SlowCallbacks(logging.Handler):
    """The loop's reports of callbacks that held it too long (``loop_in_debug_mode``), while in a ``with``."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Executing"):
            self.reports.append(record.getMessage())

    def __enter__(self) -> "SlowCallbacks":
        logging.getLogger("asyncio").addHandler(self)
        return self

    def __exit__(self, *_) -> None:
        logging.getLogger("asyncio").removeHandler(self)

    def every_time(self, send, tries: int = 3) -> list[str]:
        """The reports if ``send()`` held the loop each of ``tries`` times, else none: a request that
        holds it does so every time, while a pause of the whole process (a garbage collection, other
        processes on the cores) comes once."""
        for _ in range(tries):
            before = len(self.reports)
            send()
            if len(self.reports) == before:
                return []
            gc.collect()
        return self.reports[-tries:]


class Gate:
    """A predictor whose calls wait until the test opens the gate, then run the real ``predictor``:
    the test, not a clock, decides when the model answers. ``entered`` is set once a call has come
    in; ``calls`` lists the texts of every call."""

    def __init__(self, predictor):
        self.predictor, self.calls = predictor, []
        self.entered, self.opened = threading.Event(), threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.predictor, name)  # task, config...: the real predictor's

    def predict(self, texts: list[str], *options, **limits) -> list[dict]:
        self.calls.append(list(texts))
        self.entered.set()
        assert self.opened.wait(HANG), "the test never opened the gate"
        return self.predictor.predict(texts, *options, **limits)


class Arrivals:
    """What reaches the service's micro-batcher: the texts of each request when it is submitted
    (``submitted``) and when it leaves unanswered, its client gone or its time up (``dropped``)."""

    def __init__(self):
        self.submitted: list[list[str]] = []
        self.dropped: list[list[str]] = []
        self.changed = threading.Condition()

    def note(self, where: list, items: list[str]) -> None:
        with self.changed:
            where.append(list(items))
            self.changed.notify_all()

    def wait(self, condition) -> None:
        """Until ``condition()`` holds (the micro-batcher runs on the server's thread)."""
        with self.changed:
            assert self.changed.wait_for(condition, HANG), (self.submitted, self.dropped)

    def batcher(self) -> type[service.MicroBatcher]:
        arrivals = self

        class ReportingBatcher(service.MicroBatcher):
            async def submit(self, items: list[str], params: dict, run=None) -> list:
                arrivals.note(arrivals.submitted, items)
                try:
                    return await super().submit(items, params, run)
                except asyncio.CancelledError:
                    arrivals.note(arrivals.dropped, items)
                    raise

        return ReportingBatcher


@pytest.fixture
def gated_service(exported, monkeypatch):
    """``start(**limits)``: the sentiment model's service in this process, with ``Limits(**limits)``,
    its predictor behind a ``Gate`` and its micro-batcher reporting to ``Arrivals``; it returns
    ``(server, gate, arrivals)``."""
    started = []

    def start(**limits):
        gate, arrivals = Gate(load(exported["sentiment"], threads=1)), Arrivals()
        monkeypatch.setattr(service, "load", lambda folder, threads=None, memory_arena=True: gate)
        monkeypatch.setattr(service, "MicroBatcher", arrivals.batcher())
        limits = service.Limits(**limits)
        server = InProcessServer(service.create_app([exported["sentiment"]], limits), limits)
        started.append((gate, server))
        return server, gate, arrivals

    yield start
    for gate, server in started:
        gate.opened.set()  # a test that failed half-way leaves no call waiting
        server.close()


def encode(payload) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()  # lone surrogates as \udXXX


def raw_response(port: int, data: bytes, timeout: float = 10) -> tuple[int, dict, bool]:
    """Send ``data`` as is on a new connection; the answer's status, JSON body and whether the server
    then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = json.loads(response.read())
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        return response.status, body, closed


@pytest.fixture(scope="module")
def server(exported):
    options = ["--max_items", "8", "--max_text_chars", "2000", "--max_parallel", "1"]
    server = Server(
        exported.values(), *options, "--max_beam_tokens", "64", "--max_body_bytes", "100000",
        "--max_attention_cells", "120",
    )  # fmt: skip
    yield server
    server.close()


def test_models_predictions_and_openapi(server):
    assert server.get("/readyz")[0] == 200
    models = json.loads(server.get("/v1/models")[1])["models"]
    assert {(m["name"], m["task"]) for m in models} == {
        ("sentiment", "classification"),
        ("translator", "translation"),
        ("tagger", "tagging"),
        ("lm", "language_model"),
        ("forecaster", "forecasting"),
    }
    forecaster = next(m for m in models if m["name"] == "forecaster")
    assert (forecaster["columns"], forecaster["input_length"], forecaster["horizon"]) == (["load", "OT"], 8, 4)
    status, body = server.post("/v1/models/forecaster/predict", {"series": [WINDOW, [[0, 0]] * 8]})
    assert status == 200 and [np.shape(p["forecast"]) for p in body["predictions"]] == [(4, 2), (4, 2)]
    assert body["predictions"][0]["columns"] == ["load", "OT"]
    status, body = server.post("/v1/models/sentiment/predict", {"texts": ["w1 w2 w3", "w4"]})
    assert status == 200 and [p["label"] in ("neg", "pos") for p in body["predictions"]] == [True, True]
    status, body = server.post("/v1/models/translator/predict", {"texts": ["w1 w2", "w3"], "beam_size": 1})
    assert status == 200 and len(body["translations"]) == 2
    status, body = server.post("/v1/models/tagger/predict", {"sentences": ["w1 w2 w3", "w4"]})
    assert status == 200 and [len(p["tags"]) for p in body["predictions"]] == [3, 1]
    request = {"prompts": ["w1 w2", ""], "max_new_tokens": 5, "temperature": 0.8, "top_k": 3, "seed": 0}
    status, body = server.post("/v1/models/lm/predict", request)
    assert status == 200 and body["generations"][0].startswith("w1 w2") and len(body["generations"]) == 2
    paths = json.loads(server.get("/openapi.json")[1])["paths"]
    assert {"/v1/models/sentiment/predict", "/v1/models/translator/predict", "/metrics"} <= set(paths)


def test_the_demo_page_and_what_it_asks_for(server):
    status, page = server.get("/")
    assert status == 200 and '<script src="/demo/demo.js"' in page
    assert server.get("/demo/demo.js")[0] == 200 and server.get("/demo/nothing.js")[0] == 404
    for path in ("/", "/demo/index.html", "/demo/demo.js"):  # the page is the page under either path
        headers = server.headers(path)
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff", path
    translator = next(m for m in json.loads(server.get("/v1/models")[1])["models"] if m["name"] == "translator")
    assert translator["attention"] is True and translator["beam_size"] == 2
    status, body = server.post("/v1/models/sentiment/predict", {"texts": ["w1 w2"]})
    probabilities = body["predictions"][0]["probabilities"]
    assert list(probabilities) == ["neg", "pos"] and sum(probabilities.values()) == pytest.approx(1, abs=1e-3)
    request = {"texts": ["w1 w2 w3", "w4"], "beam_size": 2}
    plain = server.post("/v1/models/translator/predict", request)[1]["translations"]
    status, body = server.post("/v1/models/translator/predict", {**request, "attention": True})
    assert status == 200 and [t["translation"] for t in body["translations"]] == plain
    for result, sources in zip(body["translations"], (["w1", "w2", "w3", "<eos>"], ["w4", "<eos>"]), strict=True):
        weights = np.array(result["attention"])
        assert result["source_tokens"] == sources and weights.shape == (len(result["target_tokens"]), len(sources))
        np.testing.assert_allclose(weights.sum(1), 1, atol=1e-3)


WINDOW = [[5.0 + i, 30.0 - i] for i in range(8)]  # the tiny forecaster's 8 rows of (load, OT)

BAD_REQUESTS = [
    ("/v1/models/sentiment/predict", {"texts": "w1 w2"}, 422),  # a string, not a list
    ("/v1/models/sentiment/predict", {"texts": []}, 422),
    ("/v1/models/sentiment/predict", {"texts": ["w1", "   "]}, 422),
    ("/v1/models/sentiment/predict", {"text": ["w1"]}, 422),
    ("/v1/models/sentiment/predict", b"{not json", 422),
    ("/v1/models/sentiment/predict", {"texts": ["w1"] * 9}, 413),
    ("/v1/models/sentiment/predict", {"texts": ["w1 " * 700]}, 413),
    ("/v1/models/sentiment/predict", b'{"texts": ["' + b"w1 " * 40_000 + b'"]}', 413),  # over max_body_bytes
    ("/v1/models/translator/predict", {"texts": ["w1"], "beam_size": 0}, 422),
    ("/v1/models/translator/predict", {"texts": ["w1"], "beam_size": 10**6}, 422),
    ("/v1/models/translator/predict", {"texts": ["w1 w2", "w1 " * 40], "beam_size": 2}, 413),  # over the beam budget
    # 2 x 61 source tokens, each row of weights over them: at least 122 cells, over max_attention_cells
    ("/v1/models/translator/predict", {"texts": ["w1 " * 60] * 2, "beam_size": 1, "attention": True}, 413),
    ("/v1/models/nope/predict", {"texts": ["w1"]}, 404),
    ("/v1/models/tagger/predict", {"sentences": ["w1", ""]}, 422),
    ("/v1/models/lm/predict", {"prompts": ["w1"], "temperature": -1}, 422),
    ("/v1/models/lm/predict", {"prompts": ["w1"], "seed": -1}, 422),
    # lone surrogates, which the tokenizers cannot take, and NaN/infinity, which JSON cannot echo back
    ("/v1/models/sentiment/predict", {"texts": ["w1", "w2 \udc80"]}, 422),
    ("/v1/models/translator/predict", {"texts": ["\ud800"]}, 422),
    ("/v1/models/tagger/predict", {"sentences": ["w1 \udfff w2"]}, 422),
    ("/v1/models/lm/predict", {"prompts": ["\udc80"]}, 422),
    ("/v1/models/lm/predict", b'{"prompts": ["w1"], "temperature": NaN}', 422),
    ("/v1/models/lm/predict", b'{"prompts": ["w1"], "temperature": Infinity}', 422),
    ("/v1/models/lm/predict", b'{"prompts": ["w1"], "top_k": -Infinity}', 422),
    # forecast windows: the wrong number of rows or columns, a value that is no finite number, too many
    ("/v1/models/forecaster/predict", {"series": [WINDOW[:7]]}, 422),
    ("/v1/models/forecaster/predict", {"series": [WINDOW + WINDOW]}, 422),  # a longer window is not cut
    ("/v1/models/forecaster/predict", {"series": [[row + [1.0] for row in WINDOW]]}, 422),
    ("/v1/models/forecaster/predict", {"series": [[[1.0], *WINDOW[1:]]]}, 422),  # a ragged window
    ("/v1/models/forecaster/predict", {"series": WINDOW}, 422),  # a window, not a list of windows
    ("/v1/models/forecaster/predict", {"series": []}, 422),
    ("/v1/models/forecaster/predict", {"series": [[["5", "30"]] * 8]}, 422),
    ("/v1/models/forecaster/predict", {"series": [[[True, 30.0]] * 8]}, 422),
    (
        "/v1/models/forecaster/predict",
        b'{"series": [[[NaN, 30.0], [5, 30], [5, 30], [5, 30], [5, 30], [5, 30], [5, 30], [5, 30]]]}',
        422,
    ),  # fmt: skip
    ("/v1/models/forecaster/predict", b'{"series": [[[Infinity, 30.0]]]}', 422),
    ("/v1/models/forecaster/predict", {"series": [[[1e39, 30.0]] * 8]}, 422),  # beyond float32
    ("/v1/models/forecaster/predict", {"series": [WINDOW] * 9}, 413),
]


@pytest.mark.parametrize(("path", "payload", "status"), BAD_REQUESTS)
def test_bad_input_is_a_clear_4xx(server, path, payload, status):
    got, body = server.post(path, payload)
    assert got == status and body["detail"]


def test_bad_requests_leave_their_connection_and_other_requests_alone(server):
    valid = ("/v1/models/sentiment/predict", {"texts": ["w1 w2"]}, 200)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for path, payload, status in [valid, *BAD_REQUESTS, valid]:  # one keep-alive connection for all
        connection.request("POST", path, encode(payload), {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert (response.status, bool(json.loads(response.read()))) == (status, True), payload
    connection.close()

    def client(seed: int) -> list[tuple[int, int]]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        mixed = [valid, *BAD_REQUESTS] * 2
        order = np.random.default_rng(seed).permutation(len(mixed))
        outcomes = []
        for path, payload, status in (mixed[i] for i in order):
            connection.request("POST", path, encode(payload), {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            outcomes.append((response.status, status))
        connection.close()
        return outcomes

    with ThreadPoolExecutor(8) as pool:
        for outcomes in pool.map(client, range(8)):
            assert all(got == expected for got, expected in outcomes)


def test_concurrent_clients_share_calls_and_each_gets_its_own_results(exported, gated_service):
    """24 clients send different texts at once (1-3 per request); the model's one call slot is held
    (its first call waits for the test) until every request has queued, so they share onnxruntime
    calls, and each client must get back exactly the predictions for its own texts, in its order, as
    the predictor gives them when called directly."""
    rng = np.random.default_rng(0)
    seen, requests = set(), []
    for i in range(24):
        texts = []
        while len(texts) < 1 + i % 3:
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 8))))
            if text not in seen:
                seen.add(text)
                texts.append(text)
        requests.append(texts)
    predictor = load(exported["sentiment"], threads=1)
    expected = [predictor.classify(texts) for texts in requests]
    assert len({row["probability"] for rows in expected for row in rows}) > 20  # the answers tell texts apart

    server, gate, arrivals = gated_service(max_parallel=1)
    with ThreadPoolExecutor(len(requests)) as pool:
        pending = [pool.submit(server.post, SENTIMENT, {"texts": texts}) for texts in requests]
        arrivals.wait(lambda: len(arrivals.submitted) == len(requests))
        gate.opened.set()
        answers = [answer.result() for answer in pending]
    for texts, want, (status, body) in zip(requests, expected, answers, strict=True):
        assert status == 200, body
        got = body["predictions"]
        assert [(row["text"], row["label"]) for row in got] == [(row["text"], row["label"]) for row in want]
        assert [row["text"] for row in got] == texts
        probabilities = [[row["probability"] for row in rows] for rows in (got, want)]
        np.testing.assert_allclose(*probabilities, atol=2e-4)  # padding may move the rounded 4th decimal
    assert server.post("/v1/models/sentiment/predict", {"texts": ["w1"] * 65})[0] == 413  # over max_items 64

    metrics = server.get("/metrics")[1]
    calls, ran = (metric(metrics, f'rnnzoo_batch_texts_{kind}{{model="sentiment"}}') for kind in ("count", "sum"))
    assert ran == len(seen)  # every text ran exactly once
    assert calls < len(requests)  # so at least one call served several clients
    assert metric(metrics, 'rnnzoo_requests_total{model="sentiment",status="200"}') == len(requests)
    assert metric(metrics, 'rnnzoo_requests_total{model="sentiment",status="413"}') == 1
    assert metric(metrics, 'rnnzoo_request_seconds_count{model="sentiment"}') == len(requests) + 1


def metric(text: str, name: str) -> float:
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)), 0.0)


def test_tagger_work_is_bounded_by_word_length_and_budget(server, exported):
    tagger = load(exported["tagger"], threads=1)
    sentence = " ".join(["w1"] * 500 + ["b" * 500])  # 1.5 KB: 501 words, one of 500 characters
    _, feed = tagger.features([sentence])
    assert feed["chars"].shape == (1, 501, MAX_WORD_CHARACTERS)  # not 501 x 500
    calls = record_calls(tagger, "model.onnx")
    rows = tagger.tag([sentence, *["w2 w3"] * 8], budget=1000)
    assert [len(row["tags"]) for row in rows] == [501] + [2] * 8
    assert sorted(call["chars"].shape for call in calls) == [(1, 501, MAX_WORD_CHARACTERS), (8, 2, 2)]

    before = server.rss_mb()
    status, body = server.post("/v1/models/tagger/predict", {"sentences": [sentence, "w1 w2"]})
    assert status == 200 and [len(row["tags"]) for row in body["predictions"]] == [501, 2]
    assert server.rss_mb() - before < 100


def test_the_service_runs_its_sessions_without_the_memory_arena(exported, monkeypatch):
    # The arena would keep each session's largest call for good; in-process predictors keep it for speed.
    loaded = []
    monkeypatch.setattr(service, "load", lambda *args, **kwargs: loaded.append(load(*args, **kwargs)) or loaded[-1])
    service.create_app([exported["sentiment"], exported["translator"]], threads=1)
    arenas = [session.get_session_options().enable_cpu_mem_arena for p in loaded for session in p.sessions.values()]
    assert arenas == [False, False, False]  # the classifier's graph, the translator's encoder and decoder
    assert load(exported["sentiment"]).sessions["model.onnx"].get_session_options().enable_cpu_mem_arena


def test_classification_is_split_under_the_token_budget(exported):
    classifier = load(exported["sentiment"], threads=1)
    texts = ["w1 " * 50, "w2", "w3 w4", "w5 " * 30]
    expected = classifier.logits(texts)
    calls = record_calls(classifier, "model.onnx")
    np.testing.assert_allclose(classifier.logits(texts, budget=50), expected, atol=1e-5)
    assert sorted(call["tokens"].shape for call in calls) == [(1, 30), (1, 50), (2, 2)]


def test_translation_is_split_under_the_beam_budget(exported):
    translator = load(exported["translator"], threads=1)
    texts = ["w1 w2 " * 10, "w3", "w4 w5 w6", "w7 " * 15]
    expected = translator.translate(texts, beam_size=3)
    calls = record_calls(translator, "decoder.onnx")
    assert translator.translate(texts, beam_size=3, budget=3 * 21) == expected  # the same, in calls under the budget
    assert max(call["memory"].shape[0] * call["memory"].shape[1] for call in calls) <= 3 * 21
    assert {call["memory"].shape[0] for call in calls} == {3, 2 * 3}  # "w3" and "w4 w5 w6" shared a call
    with pytest.raises(TooLarge, match=r"texts \[0\] have up to 21 source tokens; at beam 3 a text may have 20"):
        translator.translate(texts, beam_size=3, budget=60)


def test_a_long_prompt_is_read_in_chunks_and_a_tiny_temperature_is_greedy(exported):
    lm = load(exported["lm"], threads=1)
    prompt = " ".join(f"w{i % 20}" for i in range(3 * PROMPT_CHUNK))
    greedy = lm.generate(prompt, max_new_tokens=4, temperature=0)
    calls = record_calls(lm, "model.onnx")
    assert lm.generate(prompt, max_new_tokens=4, temperature=1e-300, seed=0) == greedy
    assert max(call["tokens"].shape[1] for call in calls) == PROMPT_CHUNK


def record_calls(predictor, graph: str) -> list[dict]:
    """The inputs of every run of the predictor's ``graph`` from now on."""
    calls, session = [], predictor.sessions[graph]

    class Recording:
        def run(self, names, feed):
            calls.append(feed)
            return session.run(names, feed)

    predictor.sessions[graph] = Recording()
    if hasattr(predictor, "decoder"):
        predictor.encoder, predictor.decoder = predictor.sessions["encoder.onnx"], predictor.sessions["decoder.onnx"]
    return calls


def test_sub_batches_put_similar_sizes_together_under_the_budget():
    assert sub_batches([(3,), (100,), (2,), (5,)], 12) == [[2, 0], [3], [1]]
    assert sub_batches([(5, 3), (1, 64), (2, 2)], 64) == [[1], [2, 0]]


def test_body_limits_are_enforced_before_the_body_is_read(server):
    path = "/v1/models/sentiment/predict"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
    # 20 MB announced and not sent: refused at once, not read, not parsed
    status, body, _ = raw_response(server.port, head + b"Content-Length: 20000000\r\n\r\n{")
    assert status == 413 and "max_body_bytes" in body["detail"]
    # no length announced: counted as it streams, refused before its end
    chunks = b"".join(b"%x\r\n%s\r\n" % (10_000, b" " * 10_000) for _ in range(12))
    status, body, _ = raw_response(server.port, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert status == 413 and "max_body_bytes" in body["detail"]
    assert server.post(path, {"texts": ["w1"]})[0] == 200


def test_a_slow_body_is_answered_408_and_the_connection_closed(gated_service):
    server, _, _ = gated_service(body_timeout_s=1)
    head = b"POST /v1/models/sentiment/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    status, body, closed = raw_response(server.port, head + b'{"texts": ')  # 10 of the 100 bytes, then nothing
    assert status == 408 and "body_timeout_s" in body["detail"] and closed


def test_timed_out_and_abandoned_requests_answer_504_or_nothing_and_never_run(gated_service):
    """While a first request holds the model's only call slot (its call waits for the test), one
    client leaves with its text queued and another's text stays queued past request_timeout_s:
    the first is answered nothing, the second 504, and neither text is ever run."""
    server, gate, arrivals = gated_service(max_parallel=1, request_timeout_s=1)
    request = b'{"texts": ["w1 w2"]}'
    head = b"POST /v1/models/sentiment/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\n\r\n" % len(request)
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(server.post, SENTIMENT, {"texts": ["w0"]})
        assert gate.entered.wait(HANG)  # its call runs, and waits: the only slot is taken
        with socket.create_connection(("127.0.0.1", server.port)) as gone:
            gone.sendall(head + request)
            arrivals.wait(lambda: ["w1 w2"] in arrivals.submitted)  # queued behind the held call
        arrivals.wait(lambda: ["w1 w2"] in arrivals.dropped)  # the client left while its text was queued
        status, body = server.post(SENTIMENT, {"texts": ["w3"]})
        assert status == 504 and "request_timeout_s" in body["detail"]
        assert holder.result()[0] == 504  # it too waited longer than request_timeout_s, for the gate
    gate.opened.set()
    # Queued after the abandoned texts, so answered only once the batcher has passed them over.
    assert server.post(SENTIMENT, {"texts": ["w4"]})[0] == 200
    assert gate.calls == [["w0"], ["w4"]]  # the abandoned and the timed-out text never ran
    metrics = server.get("/metrics")[1]
    assert metric(metrics, 'rnnzoo_requests_total{model="sentiment",status="499"}') == 1
    assert metric(metrics, 'rnnzoo_requests_total{model="sentiment",status="504"}') == 2  # w3 and the holder
    assert metric(metrics, "rnnzoo_batch_texts_count") == 2  # w0's call, which ran out its time, and w4's


def test_a_full_queue_answers_503_not_a_longer_wait(gated_service):
    server, gate, _ = gated_service(max_queue=1, max_items=1, max_parallel=1)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(server.post, SENTIMENT, {"texts": ["w1"]})
        assert gate.entered.wait(HANG)  # its text is running: the queue of one text is full
        statuses = [server.post(SENTIMENT, {"texts": ["w1"]}) for _ in range(7)]
        gate.opened.set()
        statuses.append(first.result())
    codes = [status for status, _ in statuses]
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    assert codes == [503] * 7 + [200]
    assert all("capacity" in body["detail"] for status, body in statuses if status == 503)


def rnnzoo_serve(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_modules.cli", "serve", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_refuses_a_folder_that_is_not_an_export(tmp_path):
    result = rnnzoo_serve(str(tmp_path))
    assert result.returncode == 2 and "not exported model folders" in result.stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--max_parallel", "0"], "--max_parallel must be an integer >= 1, got 0"),
        (["--max_batch", "-3"], "--max_batch must be an integer >= 1, got -3"),
        (["--max_wait_ms", "nan"], "--max_wait_ms must be a finite number >= 0, got nan"),
        (["--request_timeout_s", "0"], "--request_timeout_s must be a finite number > 0, got 0.0"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--max_queue", "8"], "--max_queue 8 is under --max_items 64: a full request never fits"),
        (["--header_timeout_s", "0"], "--header_timeout_s must be a finite number > 0, got 0.0"),
        (["--max_connections", str(10**8)], "lower --max_connections or raise the limit"),
    ],
)
def test_serve_refuses_limits_that_cannot_work(exported, option, message):
    result = rnnzoo_serve(str(exported["sentiment"]), "--port", str(free_port()), *option)
    assert result.returncode == 2 and result.stderr.strip().endswith(message)


def test_an_export_of_another_format_or_shape_is_refused_with_what_to_do(exported, tmp_path):
    def altered(change) -> str:
        folder = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(exported["translator"], folder)
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError) as refusal:
            load(folder)
        return str(refusal.value)

    assert "export format 1, this rnnzoo reads format 2: export the model again" in altered(
        lambda config: config.update(format_version=1)
    )
    assert "missing or malformed state" in altered(lambda config: config.pop("state"))
    assert "unknown task 'parsing'" in altered(lambda config: config.update(task="parsing"))
    renamed = altered(lambda config: config["graphs"]["decoder.onnx"]["inputs"][0].update(name="token_ids"))
    assert "decoder.onnx: its inputs/outputs" in renamed and "token_ids" in renamed
    assert "has the graphs ['model.onnx']" in altered(lambda config: config.update(task="classification"))


def test_a_request_that_names_another_host_is_refused(server):
    """A page on another site whose name is rebound to 127.0.0.1 sends its own name as the Host."""
    for host, status in (("attacker.example", 400), (f"attacker.example:{server.port}", 400),
                         (f"localhost:{server.port}", 200), (f"127.0.0.1:{server.port}", 200)):  # fmt: skip
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", "/v1/models", headers={"Host": host})
        assert connection.getresponse().status == status, host
        connection.close()
    assert service.default_allowed_hosts("0.0.0.0") == ["*"]


def test_the_attention_answer_is_bounded_by_its_cells(exported):
    """Target x source weights over all texts: a long source with many target tokens would answer megabytes."""
    translator = load(exported["translator"], threads=1)
    options = TranslationOptions(beam_size=2, attention=True)
    records = translator.predict(["w1 w2 w3", "w4"], options)
    cells = sum(len(record["source_tokens"]) * len(record["attention"]) for record in records)
    assert translator.predict(["w1 w2 w3", "w4"], options, attention_cells=cells) == records
    with pytest.raises(TooLarge, match=rf"has {cells} cells .* at most {cells - 1} are returned per request"):
        translator.predict(["w1 w2 w3", "w4"], options, attention_cells=cells - 1)


class StepWatch:
    """The language model's step, watched: it never ends a text (``<eos>`` is masked, so a
    continuation runs to ``max_new_tokens``), and its third call waits until the test releases it.
    ``stopped`` is set when a step refuses to run because its request was abandoned."""

    def __init__(self, monkeypatch):
        self.calls, self.third, self.release, self.stopped = 0, threading.Event(), threading.Event(), threading.Event()
        step = LanguageModelPredictor.step

        def watched(predictor, tokens, state):
            self.calls += 1
            if self.calls == 3:
                self.third.set()
                assert self.release.wait(HANG)
            try:
                logits, state = step(predictor, tokens, state)
            except Cancelled:
                self.stopped.set()
                raise
            logits[..., predictor.special_tokens["tokenizer"]["<eos>"]] = -np.inf
            return logits, state

        monkeypatch.setattr(LanguageModelPredictor, "step", watched)


@pytest.mark.parametrize("leaves", ["timeout", "disconnect"])
def test_abandoned_generation_stops_at_its_next_step(exported, monkeypatch, leaves):
    """A request that timed out (504) or whose client left stops its decoding loop at the next step
    instead of generating its 1,000 tokens to the end for nobody."""
    watch = StepWatch(monkeypatch)
    limits = service.Limits(max_parallel=1, request_timeout_s=1 if leaves == "timeout" else HANG)
    server = InProcessServer(service.create_app([exported["lm"]], limits), limits)
    try:
        request = {"prompts": ["w1"], "max_new_tokens": 1000, "temperature": 0}
        if leaves == "timeout":
            status, body = server.post("/v1/models/lm/predict", request)
            assert status == 504 and "request_timeout_s" in body["detail"]
        else:
            body = encode(request)
            head = b"POST /v1/models/lm/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            with socket.create_connection(("127.0.0.1", server.port)) as gone:
                gone.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                assert watch.third.wait(HANG)
            deadline = time.monotonic() + HANG  # until the service has seen the client go (a guard, not a measure)
            while not metric(server.get("/metrics")[1], 'rnnzoo_requests_total{model="lm",status="499"}'):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        watch.release.set()
        assert watch.stopped.wait(HANG)
        assert watch.calls == 3  # the step held when the request was abandoned refused to run: none came after
        assert server.post("/v1/models/lm/predict", {"prompts": ["w1"], "max_new_tokens": 2})[0] == 200
    finally:
        watch.release.set()
        server.close()


def slow_headers(port: int) -> socket.socket:
    """A connection that sends half its request's headers and then nothing (slowloris)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=HANG)
    sock.sendall(b"POST /v1/models/sentiment/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return sock


def refused_status(sock: socket.socket) -> int:
    """The status the server answered a connection with before closing it (it must close it)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    assert sock.recv(1) == b""
    return response.status


def test_slow_headers_cannot_hold_the_connections_valid_clients_need(gated_service):
    """Twelve slowloris connections against a bound of eight: each new connection closes the one that
    has waited longest for its headers, so valid requests keep getting 200 while slow ones arrive;
    and what is left is closed with a 408 once header_timeout_s is up."""
    server, gate, _ = gated_service(max_connections=8, header_timeout_s=2)
    gate.opened.set()
    slow, statuses = [], []
    for _ in range(12):
        slow.append(slow_headers(server.port))
        statuses.append(server.post(SENTIMENT, {"texts": ["w1"]})[0])
    assert statuses == [200] * 12
    assert [refused_status(sock) for sock in slow] == [408] * 12  # the oldest when crowded out, the others late
    for sock in slow:
        sock.close()


def test_connections_beyond_the_bound_are_503_when_every_one_is_busy(gated_service):
    server, gate, arrivals = gated_service(max_connections=2, max_parallel=1)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(server.post, SENTIMENT, {"texts": ["w1"]})
        assert gate.entered.wait(HANG)
        queued = pool.submit(server.post, SENTIMENT, {"texts": ["w2"]})
        arrivals.wait(lambda: ["w2"] in arrivals.submitted)  # both connections are serving a request
        with socket.create_connection(("127.0.0.1", server.port), timeout=HANG) as third:
            assert refused_status(third) == 503
        gate.opened.set()
        assert running.result()[0] == 200 and queued.result()[0] == 200


def test_a_websocket_upgrade_is_an_ordinary_request(gated_service):
    """The service has no WebSocket route, and uvicorn's WebSockets are off: an Upgrade header changes nothing."""
    server, gate, _ = gated_service()
    upgrade = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    status, body, _ = raw_response(server.port, upgrade)
    assert (status, body) == (200, {"status": "ok"})


def test_the_connection_bound_skips_connections_it_does_not_own(gated_service):
    """uvicorn's list of connections may hold protocol objects of other kinds (a WebSocket's did): the bound
    counts them as busy and still closes the slow connection that makes room."""
    server, gate, _ = gated_service(max_connections=3, header_timeout_s=HANG)
    gate.opened.set()
    foreign = [object(), object()]
    server.server.server_state.connections.update(foreign)
    try:
        slow = slow_headers(server.port)
        assert server.post(SENTIMENT, {"texts": ["w1"]})[0] == 200  # the fourth connection of three
        assert refused_status(slow) == 408
        slow.close()
    finally:
        server.server.server_state.connections.difference_update(foreign)  # uvicorn shuts each down at exit


def test_a_request_head_over_64_kib_is_a_431_whether_whole_or_still_coming(gated_service):
    server, gate, _ = gated_service(header_timeout_s=HANG)
    gate.opened.set()
    whole = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: " + b"a" * 70_000 + b"\r\n\r\n"
    status, body, closed = raw_response(server.port, whole)
    assert status == 431 and "65536 bytes" in body["detail"] and closed
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as endless:
        endless.sendall(b"GET /" + b"a" * 100_000)  # a request line that has not ended yet
        assert refused_status(endless) == 431
    assert server.get("/healthz")[0] == 200
