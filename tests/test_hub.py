"""Zoo downloads against a loopback HTTP server started by the test."""

import functools
import json
import os
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from tests.conftest import REPO
from tests.test_pretrained import tokenizer_json
from zoo import SequenceClassifier, hub
from zoo.hub import ZooError, from_pretrained, write_entry
from zoo.pretrained import save_pretrained

ARGUMENTS = {"vocab_size": 20, "num_classes": 2, "embedding_dim": 8, "hidden_size": 6}


class CountingHandler(SimpleHTTPRequestHandler):
    served: dict[str, int] = {}
    delay = 0.0

    def do_GET(self):
        CountingHandler.served[self.path] = CountingHandler.served.get(self.path, 0) + 1
        time.sleep(self.delay)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A published entry served over loopback HTTP, an empty cache, and a manifest naming the entry."""
    root = tmp_path / "www"
    torch.manual_seed(0)
    folder = save_pretrained(
        root / "tiny-clf",
        SequenceClassifier(**ARGUMENTS),
        arguments=ARGUMENTS,
        task="ClassificationTask",
        task_arguments={"labels": ["neg", "pos"]},
        tokenizers={"tokenizer": tokenizer_json()},
        metrics={"split": "test", "metrics": {"test_acc": 0.5}, "command": "none"},
    )
    entry = write_entry(folder, "tiny-clf", task="classification")
    CountingHandler.served, CountingHandler.delay = {}, 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/tiny-clf"
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"entries": {"tiny-clf": {**entry, "urls": [url]}}}))
    monkeypatch.setenv("RNNZOO_MANIFEST", str(manifest))
    monkeypatch.setenv("RNNZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RNNZOO_OFFLINE", raising=False)
    yield {"folder": folder, "url": url, "cache": tmp_path / "cache" / "tiny-clf", "entry": entry}
    server.shutdown()


def test_download_verify_and_cache_hit(published):
    model = from_pretrained("tiny-clf")
    assert isinstance(model.network, SequenceClassifier) and model.metrics["metrics"] == {"test_acc": 0.5}
    assert CountingHandler.served["/tiny-clf/model.safetensors"] == 1
    again = from_pretrained("tiny-clf")  # from the cache: nothing fetched
    assert CountingHandler.served["/tiny-clf/model.safetensors"] == 1
    for name, tensor in model.network.state_dict().items():
        assert torch.equal(again.network.state_dict()[name], tensor)
    by_url = from_pretrained(published["url"])  # a published folder's URL works without the manifest
    assert by_url.config["arguments"] == ARGUMENTS


def test_corrupted_download_is_refused_and_leaves_nothing(published):
    weights = published["folder"] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ZooError, match="does not match the expected"):
        from_pretrained("tiny-clf")
    assert not (published["cache"] / "model.safetensors").exists()
    assert not [p for p in published["cache"].iterdir() if p.name.startswith(".")]  # no partial file


def test_two_processes_download_one_valid_copy(published):
    CountingHandler.delay = 0.3  # every response is slow, so the two downloads overlap
    script = f"from zoo.hub import from_pretrained; from_pretrained({published['url']!r})"
    env = {**os.environ, "RNNZOO_CACHE": str(published["cache"].parent)}
    processes = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in processes] == [0, 0]
    assert CountingHandler.served["/tiny-clf/model.safetensors"] == 1
    assert (
        hub.sha256_of(published["cache"] / "model.safetensors")
        == published["entry"]["files"]["model.safetensors"]["sha256"]
    )


def test_offline_serves_the_cache_or_says_why(published, monkeypatch):
    monkeypatch.setenv("RNNZOO_OFFLINE", "1")
    with pytest.raises(ZooError, match="not in the cache .* RNNZOO_OFFLINE"):
        from_pretrained("tiny-clf")
    monkeypatch.delenv("RNNZOO_OFFLINE")
    from_pretrained("tiny-clf")
    monkeypatch.setenv("RNNZOO_OFFLINE", "1")
    assert isinstance(from_pretrained("tiny-clf").network, SequenceClassifier)
    with pytest.raises(ZooError, match="Hugging Face cache"):
        from_pretrained("hf://rnnzoo/not-downloaded@main")


def test_names_that_escape_the_cache_are_refused(published):
    entry = published["entry"]
    for bad in ("../evil.json", "/etc/passwd", "sub/file.json", ".."):
        with pytest.raises(ZooError, match="plain file name"):
            hub.fetch_entry("tiny-clf", {**entry, "files": {bad: {"size": 1, "sha256": "0" * 64}}})
    with pytest.raises(ZooError, match="plain file name"):
        hub.fetch_entry("../outside", entry)
    with pytest.raises(ZooError, match="unknown zoo entry 'nope'"):
        from_pretrained("nope")
