"""Zoo downloads against a loopback HTTP server started by the test."""

import functools
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, tokenizer_json
from zoo import SequenceClassifier
from zoo.storage import hub
from zoo.storage.hub import ZooError, from_pretrained, write_entry
from zoo.storage.pretrained import save_pretrained

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


def save_classifier(folder, arguments: dict, **options):
    """A tiny random classifier as a pretrained folder."""
    return save_pretrained(
        folder,
        SequenceClassifier(**arguments),
        arguments=arguments,
        task_arguments={"labels": ["neg", "pos"]},
        tokenizers={"tokenizer": tokenizer_json()},
        **options,
    )


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A published entry served over loopback HTTP, an empty cache, and a manifest naming the entry."""
    root = tmp_path / "www"
    torch.manual_seed(0)
    metrics = {"split": "test", "metrics": {"test_acc": 0.5}, "command": "none"}
    folder = save_classifier(root / "tiny-clf", ARGUMENTS, metrics=metrics)
    entry = write_entry(folder, "tiny-clf", task="classification").to_json()
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
    assert by_url.config.arguments == ARGUMENTS


def test_corrupted_download_is_refused_and_leaves_nothing(published):
    weights = published["folder"] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ZooError, match="does not match the expected"):
        from_pretrained("tiny-clf")
    assert not published["cache"].exists()  # no partial file, no half-filled folder


def test_two_processes_download_one_valid_copy(published):
    CountingHandler.delay = 0.3  # every response is slow, so the two downloads overlap
    script = "from zoo.storage.hub import from_pretrained; from_pretrained('tiny-clf')"
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
    with pytest.raises(ZooError, match="not in the cache .* offline mode is set"):
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


def serve_folder(root) -> str:
    """A loopback HTTP server for ``root``; returns its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def with_entry(published, monkeypatch, tmp_path, **changes) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps({"entries": {"tiny-clf": {**published["entry"], "urls": [published["url"]], **changes}}})
    )
    monkeypatch.setenv("RNNZOO_MANIFEST", str(manifest))


def test_an_entry_with_a_crafted_size_or_digest_is_refused_before_any_download(published):
    entry_path = published["folder"] / "entry.json"
    entry = json.loads(entry_path.read_text())
    weights = entry["files"]["model.safetensors"]
    for bad in ({"size": 10**15}, {"size": "big"}, {"size": -1}, {"sha256": "not hex"}):
        entry_path.write_text(
            json.dumps({**entry, "files": {**entry["files"], "model.safetensors": {**weights, **bad}}})
        )
        with pytest.raises(ZooError, match="entry.json: missing or malformed files"):
            from_pretrained(published["url"])
        assert CountingHandler.served.get("/tiny-clf/model.safetensors") is None
    entry_path.write_text(json.dumps({**entry, "urls": "http://elsewhere"}))
    with pytest.raises(ZooError, match="missing or malformed urls"):
        from_pretrained(published["url"])


def test_download_stops_at_the_size_the_entry_states(published, monkeypatch, tmp_path):
    files = json.loads(json.dumps(published["entry"]["files"]))
    files["model.safetensors"]["size"] = 10
    with_entry(published, monkeypatch, tmp_path, files=files)
    with pytest.raises(ZooError, match="more than the 10 bytes the entry states"):
        from_pretrained("tiny-clf")
    assert not published["cache"].exists()


def test_an_oversized_entry_json_is_refused(published, monkeypatch):
    monkeypatch.setattr(hub, "MAX_ENTRY_BYTES", 100)
    with pytest.raises(ZooError, match="larger than 100 bytes"):
        from_pretrained(published["url"])


def test_a_checksum_mismatch_tries_the_next_mirror(published, monkeypatch, tmp_path):
    bad = tmp_path / "bad" / "tiny-clf"
    bad.mkdir(parents=True)
    for path in published["folder"].iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    weights = bytearray((bad / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(weights))
    with_entry(published, monkeypatch, tmp_path, urls=[serve_folder(tmp_path / "bad") + "/tiny-clf", published["url"]])
    assert isinstance(from_pretrained("tiny-clf").network, SequenceClassifier)


class CutHandler(SimpleHTTPRequestHandler):
    """Announces the whole file, sends half of it, and closes the connection."""

    def do_GET(self):
        data = (self.directory_path / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_cut_transfer_is_a_clear_error_and_leaves_nothing(published, monkeypatch, tmp_path):
    handler = type("Cut", (CutHandler,), {"directory_path": published["folder"]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with_entry(published, monkeypatch, tmp_path, urls=[f"http://127.0.0.1:{server.server_address[1]}"])
    with pytest.raises(ZooError, match="the transfer was cut after"):
        from_pretrained("tiny-clf")
    server.shutdown()
    assert not published["cache"].exists()


def test_a_remote_entry_cannot_point_into_the_package(published):
    entry_path = published["folder"] / "entry.json"
    entry = json.loads(entry_path.read_text())
    entry_path.write_text(json.dumps({**entry, "local": "pretrained_models/imdb-bilstm"}))
    model = from_pretrained(published["url"])  # downloaded and checked, not the packaged imdb-bilstm
    assert model.config.arguments == ARGUMENTS


def test_the_cache_is_keyed_by_the_whole_url(published, tmp_path):
    other = tmp_path / "mirror" / "tiny-clf"
    torch.manual_seed(1)
    arguments = {**ARGUMENTS, "hidden_size": 4}
    save_classifier(other, arguments)
    write_entry(other, "tiny-clf", task="classification")
    first = hub.resolve(published["url"])
    second = hub.resolve(serve_folder(tmp_path / "mirror") + "/tiny-clf")
    assert first != second
    assert from_pretrained(published["url"]).config.arguments == ARGUMENTS
    assert from_pretrained(str(second)).config.arguments == arguments


def test_files_outside_the_folder_or_its_entry_are_never_read(published, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in published["folder"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    secret = tmp_path / "secret.json"
    secret.write_text(tokenizer_json())
    config = json.loads((folder / "config.json").read_text())
    for name in (str(secret), "../secret.json"):
        (folder / "config.json").write_text(json.dumps({**config, "tokenizers": {"tokenizer": name}}))
        with pytest.raises(ValueError, match="not a plain file name inside the folder"):
            from_pretrained(str(folder))
    (folder / "extra.json").write_text(tokenizer_json())  # inside, but not covered by entry.json's sha256
    (folder / "config.json").write_text(json.dumps({**config, "tokenizers": {"tokenizer": "extra.json"}}))
    with pytest.raises(ValueError, match="extra.json is not listed in entry.json"):
        from_pretrained(str(folder))


def test_a_folder_named_like_an_entry_does_not_replace_it(published, tmp_path, monkeypatch):
    from_pretrained("tiny-clf")
    monkeypatch.chdir(tmp_path)
    impostor = tmp_path / "tiny-clf"
    arguments = {**ARGUMENTS, "hidden_size": 3}
    save_classifier(impostor, arguments)
    with pytest.warns(UserWarning, match="write ./tiny-clf to load it"):
        assert from_pretrained("tiny-clf").config.arguments == ARGUMENTS  # the verified entry
    assert from_pretrained("./tiny-clf").config.arguments == arguments  # the folder, asked for explicitly


FLOOD = 64 << 20  # what a lying Hub sends for a file: far more than any entry allows


class FakeHub(BaseHTTPRequestHandler):
    """The Hub's download URLs (``/{org}/{repo}/resolve/{revision}/{file}``) served from ``repository``.
    A file in ``flood`` is answered with ``FLOOD`` bytes instead (``written`` counts what got out), one
    in ``redirect`` through a storage URL on another host. Records each request with its token."""

    repository: Path
    flood: set[str]
    redirect: set[str]
    requests: list[tuple[str, str | None]]
    written = 0

    def do_GET(self):
        if not self.path.startswith("/api/"):  # (huggingface_hub's own telemetry calls are not recorded)
            self.requests.append((self.path, self.headers.get("Authorization")))
        file_name = self.path.rsplit("/", 1)[-1]
        if file_name in self.redirect and "/resolve/" in self.path:
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/storage/{file_name}")
            self.end_headers()
        elif file_name in self.flood:
            self.send_response(200)
            self.send_header("Content-Length", str(FLOOD))
            self.end_headers()
            try:
                while type(self).written < FLOOD:
                    self.wfile.write(b"\0" * (1 << 16))
                    type(self).written += 1 << 16
            except OSError:  # the client hung up
                self.close_connection = True
        elif (self.repository / file_name).is_file():
            data = (self.repository / file_name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(published, tmp_path, monkeypatch):
    """``HF_ENDPOINT`` on a loopback Hub serving the published folder, a token, and a Hugging Face cache in
    ``tmp_path/hf``."""
    from huggingface_hub import constants

    handler = type("Hub", (FakeHub,), {"repository": published["folder"], "flood": set(), "redirect": set()})
    handler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # read by huggingface_hub at import
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    yield handler, server
    server.shutdown()


def cached_files(tmp_path) -> list[Path]:
    """Every file in rnnzoo's and in the Hugging Face cache (lock files aside)."""
    folders = [tmp_path / "cache", tmp_path / "hf"]
    return [p for folder in folders for p in folder.rglob("*") if p.is_file() and p.suffix != ".lock"]


def test_hf_reads_entry_json_first_and_then_fetches_only_the_files_it_lists(published, fake_hub, monkeypatch):
    from huggingface_hub import constants

    handler, server = fake_hub
    repository = published["folder"]
    (repository / "huge-unlisted.bin").write_bytes(b"\0" * 1000)  # in the repository, not in entry.json
    handler.redirect = {"model.safetensors"}
    folder = hub.resolve("hf://rnnzoo/tiny-clf@main")
    paths, resolve = [path for path, _ in handler.requests], "/rnnzoo/tiny-clf/resolve/main/"
    assert paths[0] == resolve + "entry.json"  # first, and then only the files it lists
    listed = [resolve + name for name in published["entry"]["files"]]
    assert sorted(paths[1:]) == sorted([*listed, "/storage/model.safetensors"])
    for path, token in handler.requests:  # the token goes to the Hub, never to the storage it redirects to
        assert token == (None if path.startswith("/storage/") else "Bearer hf_test")
    assert not (folder / "huge-unlisted.bin").exists()
    assert isinstance(from_pretrained("hf://rnnzoo/tiny-clf@main").network, SequenceClassifier)

    crafted = json.loads((repository / "entry.json").read_text())
    crafted["files"]["model.safetensors"]["size"] = 10**15
    (repository / "entry.json").write_text(json.dumps(crafted))
    handler.requests.clear()
    with pytest.raises(ZooError, match="entry.json: missing or malformed files"):
        hub.resolve("hf://rnnzoo/tiny-clf")
    assert [path for path, _ in handler.requests] == ["/rnnzoo/tiny-clf/resolve/main/entry.json"]
    (repository / "entry.json").unlink()
    with pytest.raises(ZooError, match="holds no entry.json: publish the folder"):
        hub.resolve("hf://rnnzoo/tiny-clf")

    handler.requests.clear()  # offline mode, or an unreachable Hub, serves the copy in the cache, or says why
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.resolve("hf://rnnzoo/tiny-clf@main") == folder and handler.requests == []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server.shutdown()
    server.server_close()
    assert hub.resolve("hf://rnnzoo/tiny-clf@main") == folder
    with pytest.raises(ZooError, match="not in the cache .* the Hub cannot be reached"):
        hub.resolve("hf://rnnzoo/tiny-clf@other")


def test_hf_download_stops_at_the_size_the_entry_states_and_leaves_nothing(published, fake_hub, tmp_path):
    handler, _ = fake_hub
    entry = json.loads((published["folder"] / "entry.json").read_text())
    entry["files"]["model.safetensors"]["size"] = 1000
    (published["folder"] / "entry.json").write_text(json.dumps(entry))
    handler.flood = {"model.safetensors"}
    with pytest.raises(ZooError, match="more than the 1000 bytes the entry states"):
        hub.resolve("hf://rnnzoo/tiny-clf")
    assert handler.written < FLOOD // 2  # the client hung up after 1,001 bytes: the rest is what socket buffers took
    assert cached_files(tmp_path) == []


def test_hf_an_oversized_entry_json_is_refused_unread(published, fake_hub, tmp_path):
    handler, _ = fake_hub
    handler.flood = {"entry.json"}
    with pytest.raises(ZooError, match=f"{hub.MAX_ENTRY_BYTES} bytes"):
        hub.resolve("hf://rnnzoo/tiny-clf")
    assert handler.written < FLOOD // 2
    assert cached_files(tmp_path) == []
