"""The HTTP service, started for real on 127.0.0.1 in a subprocess that cannot import torch."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from deploy.export import export
from tests.conftest import REPO
from tests.test_deploy import pretrained_folder, translation_tokenizer
from zoo import RNNLanguageModel, Seq2Seq, SequenceClassifier, SequenceTagger
from zoo.pretrained import save_pretrained


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    arguments = {"vocab_size": 23, "num_classes": 2, "embedding_dim": 8, "hidden_size": 8, "pooling": "max"}
    folder = pretrained_folder(root / "clf", SequenceClassifier(**arguments), arguments, {"labels": ["neg", "pos"]})
    export(folder, root / "sentiment")
    arguments = {"source_vocab_size": 24, "target_vocab_size": 24, "embedding_dim": 8, "hidden_size": 8}
    tokenizers = {"source_tokenizer": translation_tokenizer(), "target_tokenizer": translation_tokenizer()}
    folder = save_pretrained(
        root / "s2s",
        Seq2Seq(**arguments, context="attention", attention="bahdanau"),
        arguments={**arguments, "context": "attention", "attention": "bahdanau"},
        task="TranslationTask",
        task_arguments={"beam_size": 2, "max_decode_length": 8},
        tokenizers=tokenizers,
    )
    export(folder, root / "translator")
    arguments = {"vocab_size": 23, "labels": ["O", "B-X", "I-X"], "embedding_dim": 8, "hidden_size": 8}
    folder = pretrained_folder(root / "tag", SequenceTagger(**arguments), arguments, {"labels": arguments["labels"]})
    export(folder, root / "tagger")
    arguments = {"vocab_size": 23, "embedding_dim": 8, "hidden_size": 8}
    export(pretrained_folder(root / "lm", RNNLanguageModel(**arguments), arguments), root / "lm")
    return {name: root / name for name in ("sentiment", "translator", "tagger", "lm")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, folders, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        arguments = ["serve", *map(str, folders), "--port", str(self.port), "--threads", "1", *options]
        script = (
            "import sys; sys.modules['torch'] = None\n"  # the service must not need torch
            "from lightning_modules.cli import main\n"
            f"main({arguments!r})\n"
        )
        self.process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.process.stderr.read()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the server did not come up in 60 s")

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

    def post(self, path: str, payload) -> tuple[int, dict]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, text = self.request("POST", path, body)
        return status, json.loads(text)

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(exported):
    server = Server(exported.values(), "--max_items", "8", "--max_text_chars", "200", "--max_parallel", "1")
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
    }
    status, body = server.post("/v1/models/sentiment/predict", {"texts": ["w1 w2 w3", "w4"]})
    assert status == 200 and [p["label"] in ("neg", "pos") for p in body["predictions"]] == [True, True]
    status, body = server.post("/v1/models/translator/predict", {"texts": ["w1 w2", "w3"], "beam_size": 1})
    assert status == 200 and len(body["translations"]) == 2
    status, body = server.post("/v1/models/tagger/predict", {"sentences": ["w1 w2 w3", "w4"]})
    assert status == 200 and [len(p["tags"]) for p in body["predictions"]] == [3, 1]
    request = {"prompts": ["w1 w2", ""], "max_tokens": 5, "temperature": 0.8, "top_k": 3, "seed": 0}
    status, body = server.post("/v1/models/lm/predict", request)
    assert status == 200 and body["generations"][0].startswith("w1 w2") and len(body["generations"]) == 2
    paths = json.loads(server.get("/openapi.json")[1])["paths"]
    assert {"/v1/models/sentiment/predict", "/v1/models/translator/predict", "/metrics"} <= set(paths)


@pytest.mark.parametrize(
    ("path", "payload", "status"),
    [
        ("/v1/models/sentiment/predict", {"texts": "w1 w2"}, 422),  # a string, not a list
        ("/v1/models/sentiment/predict", {"texts": []}, 422),
        ("/v1/models/sentiment/predict", {"texts": ["w1", "   "]}, 422),
        ("/v1/models/sentiment/predict", {"text": ["w1"]}, 422),
        ("/v1/models/sentiment/predict", b"{not json", 422),
        ("/v1/models/sentiment/predict", {"texts": ["w1"] * 9}, 413),
        ("/v1/models/sentiment/predict", {"texts": ["w1 " * 100]}, 413),
        ("/v1/models/translator/predict", {"texts": ["w1"], "beam_size": 0}, 422),
        ("/v1/models/nope/predict", {"texts": ["w1"]}, 404),
        ("/v1/models/tagger/predict", {"sentences": ["w1", ""]}, 422),
        ("/v1/models/lm/predict", {"prompts": ["w1"], "temperature": -1}, 422),
    ],
)
def test_bad_input_is_a_clear_4xx(server, path, payload, status):
    got, body = server.post(path, payload)
    assert got == status and body["detail"]


def test_concurrent_requests_are_micro_batched_and_counted(server):
    def classify(i):
        return server.post("/v1/models/sentiment/predict", {"texts": [f"w{i % 20} w3"]})[0]

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(classify, range(32))) == {200}
    metrics = server.get("/metrics")[1]
    calls, texts = (metric(metrics, f"rnnzoo_batch_texts_{kind}") for kind in ("count", "sum"))
    assert texts >= 32 and calls < texts  # several requests shared an onnxruntime call
    assert 'rnnzoo_requests_total{model="sentiment",status="200"}' in metrics
    assert metric(metrics, 'rnnzoo_requests_total{model="sentiment",status="413"}') >= 2  # the bad-input tests
    assert "rnnzoo_request_seconds_bucket" in metrics


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_a_full_queue_answers_503_not_a_longer_wait(exported):
    server = Server([exported["sentiment"]], "--max_queue", "1", "--max_wait_ms", "300")
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(lambda _: server.post("/v1/models/sentiment/predict", {"texts": ["w1"]}), range(8))
            )
        codes = [status for status, _ in statuses]
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
        assert all("capacity" in body["detail"] for status, body in statuses if status == 503)
    finally:
        server.close()


def test_serve_refuses_a_folder_that_is_not_an_export(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lightning_modules.cli", "serve", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "not exported model folders" in result.stderr
