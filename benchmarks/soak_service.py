"""Soak test of ``rnnzoo serve`` with the four shipped zoo models: mixed valid and invalid requests.

Exports the shipped entries (once: ``--exports`` keeps them for later runs), starts ``rnnzoo serve``
on 127.0.0.1, sends a warm-up round and then ``--requests`` requests (about 70% valid, 30% invalid)
from ``--concurrency`` client threads, each on its own keep-alive connection, stopping early after
``--max_seconds``. Prints requests/s, p50/p99 latency, the status counts of valid and of invalid
requests, client-side connection errors and the server's resident memory (VmRSS) after the warm-up
and at the end. Targets: every valid request 200, every invalid one a 4xx, no connection error,
at most 50 MB of memory growth; the exit status is 1 when one is missed. Throughout the run,
``--slow_connections`` clients hold half-sent headers open (slowloris) and a client abandons a
1,000-token generation every ``--abandon_every`` seconds: neither may cost a valid request its 200.

Beside ``/v1``, about a fifth of the requests speak the Open Inference Protocol (``/v2`` infer with JSON
and binary tensors, ``generate_stream``, and the malformed kinds), and some are conversations: a few
chunks kept as a language-model sequence (``sequence_id``), one after the other on one connection,
a fifth of them left without ``sequence_end`` for the idle timeout to drop. The server runs with
``--max_sequences 64 --sequence_idle_s 5``; at the end its ``rnnzoo_open_sequences`` must be within
that bound.

With ``--ray`` it soaks, one after the other, ``rnnzoo serve`` and ``rnnzoo serve --ray --replicas N``
for each N of ``--replicas`` (default 1 and 2), the same requests each time, and prints them side by
side with the throughput ratio to ``rnnzoo serve`` (memory: the replicas' processes together).

    python benchmarks/soak_service.py [--requests 10000] [--concurrency 16] [--max_seconds 1800]
    python benchmarks/soak_service.py --ray --replicas 1 2 --requests 2000
"""

import argparse
import http.client
import itertools
import json
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deploy import open_inference
from deploy.ray_serve import replica_processes

REPO = Path(__file__).resolve().parents[1]
ENTRIES = ("imdb-bilstm", "multi30k-bahdanau", "conll-bilstm-crf", "ptb-lstm-small-tied", "etth1-segrnn-96")
WINDOW_ROWS, COLUMNS = 720, 7  # etth1-segrnn-96 reads 720 hours of 7 series
MAX_ITEMS, MAX_TEXT_CHARS, MAX_BODY_BYTES = 64, 10_000, 8 * 2**20  # the service's default limits
# Below the default 262,144 (which a request refused before decoding passes only with 262,144 source
# tokens to read first): the valid attention requests here need under 1,000 cells.
ATTENTION_CELLS = 16_384
MAX_SEQUENCES, SEQUENCE_IDLE_S = 64, 5
SEQUENCES = ["--max_sequences", str(MAX_SEQUENCES), "--sequence_idle_s", str(SEQUENCE_IDLE_S)]

REVIEWS = [
    "One of the best films I have seen in years; the cast is wonderful.",
    "A dull, predictable plot and wooden acting. I wanted my two hours back.",
    "The photography is gorgeous but the story never comes together.",
    "I laughed, I cried, and I will watch it again with my kids.",
    "Terrible. The director clearly had no idea what to do with the book.",
    "An honest, quiet little movie that stays with you long after it ends.",
]
GERMAN = [
    "Ein Hund rennt durch den Schnee.",
    "Zwei Männer spielen Fußball auf einer grünen Wiese.",
    "Eine Frau mit einem roten Hut liest ein Buch.",
    "Kinder spielen am Strand in der Nähe des Wassers.",
    "Ein Mann fährt mit dem Fahrrad durch die Stadt.",
]
ENGLISH = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn reported from Brussels on Monday .",
    "The European Commission said on Thursday it disagreed with German advice .",
    "Japan began the defence of their Asian Cup title with a lucky 2-1 win against Syria .",
]
PROMPTS = ["the company said", "in the first quarter", "", "shares of the bank", "the new york stock exchange"]
OVERSIZE = b'{"texts": ["' + b"x" * MAX_BODY_BYTES + b'"]}'
# The third hardening pass's attacks: a shape of 600 sizes of 4,000 digits (2.4 MB), 1 MiB of empty BYTES
# elements for a shape of one, and a zero-size dimension beside a huge one.
LONG_SHAPE = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [10**3999] * 600}]}).encode()
EMPTY_ELEMENTS_HEAD = json.dumps(
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 2**20}}]}
).encode()
EMPTY_ELEMENTS = EMPTY_ELEMENTS_HEAD + bytes(2**20)


def export_entries(folder: Path) -> dict[str, Path]:
    """The shipped entries exported into ``folder`` (kept there: later runs skip the export)."""
    exported = {entry: folder / entry for entry in ENTRIES}
    for entry, out in exported.items():
        if not (out / "config.json").is_file():
            from deploy.export import export  # needs torch; only when an export is missing

            print(f"exporting {entry} to {out}", flush=True)
            export(REPO / "zoo" / "pretrained_models" / entry, out)
    return exported


def valid_request(rng: np.random.Generator) -> tuple[str, str, dict]:
    """(label, model, payload) of a request the service must answer 200."""

    def pick(pool: list[str], n: int) -> list[str]:
        return [str(text) for text in rng.choice(pool, n)]

    kind = rng.integers(9)
    if kind == 8:
        return "forecast", "etth1-segrnn-96", {"series": windows(rng, int(rng.integers(1, 3))).tolist()}
    if kind <= 1:
        texts = pick(REVIEWS, rng.integers(1, 9))
        if rng.random() < 0.1:  # one long review among short ones
            texts.append(" ".join(pick(REVIEWS, 120))[:MAX_TEXT_CHARS])
        return "classify", "imdb-bilstm", {"texts": texts}
    if kind <= 3:
        payload = {"texts": pick(GERMAN, rng.integers(1, 5)), "beam_size": int(rng.choice([1, 3, 5]))}
        if rng.random() < 0.1:  # a longer text at the largest beam: split into calls under the budget
            payload = {"texts": [" ".join(pick(GERMAN, 12)), *payload["texts"]], "beam_size": 16, "max_length": 40}
        elif rng.random() < 0.2:
            payload["attention"] = True
        return "translate", "multi30k-bahdanau", payload
    if kind <= 5:
        sentences = pick(ENGLISH, rng.integers(1, 9))
        if rng.random() < 0.1:  # 500 one-letter words and one of 500 letters
            sentences.append(" ".join(["a"] * 500 + ["b" * 500]))
        return "tag", "conll-bilstm-crf", {"sentences": sentences}
    payload = {"prompts": pick(PROMPTS, rng.integers(1, 4)), "max_new_tokens": int(rng.integers(5, 30))}
    payload |= {"temperature": float(rng.choice([0.0, 0.7, 1.0])), "top_k": int(rng.choice([5, 50])), "seed": 0}
    return "generate", "ptb-lstm-small-tied", payload


def windows(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` random-walk windows of etth1-segrnn-96's shape, near the data's range."""
    steps = rng.normal(0, 0.5, (count, WINDOW_ROWS, COLUMNS))
    return (np.cumsum(steps, axis=1) + rng.uniform(0, 20, (count, 1, COLUMNS))).astype(np.float32).round(3)


def v2_tensor(texts: list[str], binary: bool) -> tuple[dict, bytes]:
    """The ``text`` input tensor of ``texts``, with its data in JSON or as binary (BYTES encoding)."""
    shape, data, json_data = open_inference.encode("BYTES", texts)  # the service's own encoding of its answers
    tensor = {"name": "text", "datatype": "BYTES", "shape": shape}
    if not binary:
        return tensor | {"data": json_data}, b""
    return tensor | {"parameters": {"binary_data_size": len(data)}}, data


def v2_request(rng: np.random.Generator) -> tuple[str, str, bytes, dict]:
    """(label, path, body, headers) of a valid Open Inference Protocol request."""
    binary = bool(rng.random() < 0.5)
    kind = rng.integers(5)
    if kind == 4:
        series = windows(rng, 1)
        tensor = {"name": "series", "datatype": "FP32", "shape": list(series.shape)}
        if not binary:
            return "v2 forecast", "/v2/models/etth1-segrnn-96/infer", json.dumps({"inputs": [tensor | {
                "data": series.reshape(-1).tolist()}]}).encode(), {}  # fmt: skip
        head = json.dumps({"inputs": [tensor | {"parameters": {"binary_data_size": series.nbytes}}]}).encode()
        headers = {"Inference-Header-Content-Length": str(len(head))}
        return "v2 forecast", "/v2/models/etth1-segrnn-96/infer", head + series.tobytes(), headers
    if kind == 0:
        model, texts, parameters = "imdb-bilstm", [str(t) for t in rng.choice(REVIEWS, rng.integers(1, 9))], {}
    elif kind == 1:
        model, texts, parameters = "conll-bilstm-crf", [str(t) for t in rng.choice(ENGLISH, rng.integers(1, 5))], {}
    elif kind == 2:
        model, texts, parameters = "multi30k-bahdanau", [str(rng.choice(GERMAN))], {"beam_size": 3}
    else:
        generate = {"text_input": str(rng.choice(PROMPTS)), "parameters": {"max_new_tokens": 20, "seed": 1}}
        return "v2 stream", "/v2/models/ptb-lstm-small-tied/generate_stream", json.dumps(generate).encode(), {}
    tensor, data = v2_tensor(texts, binary)
    head = json.dumps({"inputs": [tensor], "parameters": parameters}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))} if binary else {}
    return "v2 infer", f"/v2/models/{model}/infer", head + data, headers


def conversation(rng: np.random.Generator, key: int) -> list[bytes]:
    """The v2 bodies of a conversation kept as sequence ``key``: 2-5 chunks, ended unless abandoned."""
    chunks = [str(rng.choice(PROMPTS[:2] + PROMPTS[3:])) for _ in range(rng.integers(2, 6))]
    abandoned = rng.random() < 0.2
    bodies = []
    for i, chunk in enumerate(chunks):
        sequence = {
            "sequence_id": key,
            "sequence_start": i == 0,
            "sequence_end": i == len(chunks) - 1 and not abandoned,
        }
        parameters = {"max_new_tokens": 10, "temperature": 0.0, **sequence}
        bodies.append(json.dumps({"inputs": [v2_tensor([chunk], False)[0]], "parameters": parameters}).encode())
    return bodies


def invalid_request(rng: np.random.Generator) -> tuple[str, str, dict | bytes]:
    """(label, model, payload or raw body) of a request the service must answer with a 4xx."""
    kinds = [
        ("lone surrogate", "imdb-bilstm", {"texts": ["fine", "not \udc80 fine"]}),
        ("lone surrogate", "conll-bilstm-crf", {"sentences": ["EU \ud800 rejects"]}),
        ("lone surrogate", "ptb-lstm-small-tied", {"prompts": ["\udfff"]}),
        ("wrong type", "imdb-bilstm", {"texts": "a string, not a list"}),
        ("wrong type", "multi30k-bahdanau", {"texts": [1, 2]}),
        ("wrong type", "conll-bilstm-crf", {"sentences": {"a": 1}}),
        ("empty text", "imdb-bilstm", {"texts": ["good", "   "]}),
        ("empty text", "multi30k-bahdanau", {"texts": []}),
        ("too many items", "imdb-bilstm", {"texts": ["good"] * (MAX_ITEMS + 1)}),
        ("too long text", "conll-bilstm-crf", {"sentences": ["a " * (MAX_TEXT_CHARS // 2 + 1)]}),
        ("NaN parameter", "ptb-lstm-small-tied", b'{"prompts": ["the"], "temperature": NaN}'),
        ("NaN parameter", "ptb-lstm-small-tied", b'{"prompts": ["the"], "top_k": Infinity}'),
        ("huge beam", "multi30k-bahdanau", {"texts": ["Ein Hund."], "beam_size": 10**6}),
        ("beam over budget", "multi30k-bahdanau", {"texts": [" ".join(["Hund ."] * 1400)], "beam_size": 16}),
        # 4 x 5,001 source tokens: over ATTENTION_CELLS before a single step is decoded
        ("attention over budget", "multi30k-bahdanau", {"texts": ["a " * 5000] * 4, "attention": True}),
        ("malformed JSON", "imdb-bilstm", b'{"texts": ["good"'),
        ("oversize body", "imdb-bilstm", OVERSIZE),
        ("unknown model", "no-such-model", {"texts": ["good"]}),
        ("missing field", "multi30k-bahdanau", {"text": ["Ein Hund."]}),
        ("forecast beyond float32", "etth1-segrnn-96", {"series": [[[3e38] * COLUMNS] * WINDOW_ROWS]}),
    ]
    return kinds[rng.integers(len(kinds))]


def invalid_v2_request(rng: np.random.Generator) -> tuple[str, str, bytes, dict]:
    """(label, path, body, headers) of an Open Inference Protocol request that must be a 4xx."""
    text = {"inputs": [v2_tensor(["the company said"], False)[0]]}
    head_length = str(len(EMPTY_ELEMENTS_HEAD))

    def series(shape: list[int]) -> dict:
        return {"inputs": [{"name": "series", "datatype": "FP32", "shape": shape, "data": []}]}

    if rng.random() < 0.1:
        generate = {"text_input": "the", "parameters": {"sequence_id": 9, "sequence_start": True}}
        return "v2 generate in a sequence", "/v2/models/ptb-lstm-small-tied/generate", json.dumps(generate).encode(), {}
    kinds = [
        ("v2 unknown sequence", "ptb-lstm-small-tied", text | {"parameters": {"sequence_id": 2**63 + 1}}, {}),
        ("v2 sequence of a classifier", "imdb-bilstm", text | {"parameters": {"sequence_id": 5}}, {}),
        ("v2 binary too short", "imdb-bilstm", b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}),
        ("v2 wrong datatype", "imdb-bilstm", {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1]}]}, {}),
        ("v2 unknown parameter", "multi30k-bahdanau", text | {"parameters": {"beam": 3}}, {}),
        ("v2 zero-size shape", "etth1-segrnn-96", series([1, 4_000_000, 0]), {}),
        ("v2 shape of 2**63", "etth1-segrnn-96", series([1, 2**63, 0]), {}),
        ("v2 long shape", "imdb-bilstm", LONG_SHAPE, {}),
        ("v2 empty elements", "imdb-bilstm", EMPTY_ELEMENTS, {"Inference-Header-Content-Length": head_length}),
        ("v2 malformed outputs", "imdb-bilstm", text | {"outputs": [{"name": ["label"]}]}, {}),
        ("v2 superscript header length", "imdb-bilstm", EMPTY_ELEMENTS, {"Inference-Header-Content-Length": "\u00b2"}),
    ]
    label, model, payload, headers = kinds[rng.integers(len(kinds))]
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return label, f"/v2/models/{model}/infer", body, headers


Request = tuple[bool, str, str, list[bytes], dict]  # valid, label, path, bodies (sent in turn), headers


def make_requests(count: int, seed: int, conversations: bool = True) -> list[Request]:
    """``count`` requests, about 70% valid, a fifth of them over ``/v2`` (some conversations)."""
    rng = np.random.default_rng(seed)
    requests = []
    while len(requests) < count:
        valid, v2 = rng.random() < 0.7, rng.random() < 0.2
        if v2 and valid and rng.random() < 0.25 and conversations:
            key = int(rng.integers(1, 2**63))
            path = "/v2/models/ptb-lstm-small-tied/infer"
            requests.append((True, "v2 conversation", path, conversation(rng, key), {}))
        elif v2:
            label, path, body, headers = v2_request(rng) if valid else invalid_v2_request(rng)
            requests.append((valid, label, path, [body], headers))
        else:
            label, model, payload = valid_request(rng) if valid else invalid_request(rng)
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            requests.append((valid, label, f"/v1/models/{model}/predict", [body], {}))
    return requests


class Client:
    """Sends requests on one keep-alive connection per thread; a connection error counts and reconnects."""

    def __init__(self, port: int):
        self.port, self.local, self.lock = port, threading.local(), threading.Lock()
        self.outcomes: list[tuple[bool, str, int | str, float]] = []  # valid, label, status or error, seconds

    def send(self, request: Request, deadline: float) -> None:
        """Each of the request's bodies in turn (a conversation's chunks), each an outcome."""
        valid, label, path, bodies, headers = request
        for body in bodies:
            if time.monotonic() > deadline:
                return
            if getattr(self.local, "connection", None) is None:
                self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            start = time.perf_counter()
            try:
                self.local.connection.request("POST", path, body, {"Content-Type": "application/json", **headers})
                response = self.local.connection.getresponse()
                answer = response.read()
                outcome = response.status
                if outcome == 200 and b'data: {"error"' in answer:  # a stream that failed after its 200
                    outcome = "stream error"
            except (OSError, http.client.HTTPException) as err:
                outcome = type(err).__name__
                self.local.connection.close()
                self.local.connection = None
            with self.lock:
                self.outcomes.append((valid, label, outcome, time.perf_counter() - start))

    def run(self, requests: list, concurrency: int, max_seconds: float) -> float:
        deadline = time.monotonic() + max_seconds
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            sent = pool.map(lambda request: self.send(request, deadline), requests)
            list(tqdm(sent, total=len(requests), desc="requests", disable=None))  # stderr, TTY only
        return time.perf_counter() - start


class Nuisances:
    """Beside the requests: ``slow`` connections that send half their headers and then nothing (each
    replaced once the server closes it); every ``abandon_every`` seconds a 1,000-token generation whose
    client leaves as soon as it is sent; and, unless ``attacks`` is off, the third hardening pass's
    attackers in turn: a request line sent in 64 KiB pieces for ever (endless head), a WebSocket upgrade,
    and a flood of twenty 10,000-character chunks at once to one language-model sequence. Counts what
    each got."""

    GENERATION = json.dumps({"prompts": ["the company said"], "max_new_tokens": 1000, "temperature": 1.0}).encode()
    UPGRADE = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    FLOOD = 20

    def __init__(self, port: int, slow: int, abandon_every: float, attacks: bool):
        self.port, self.slow, self.abandon_every = port, slow, abandon_every
        self.stop, self.timed_out, self.abandoned = threading.Event(), 0, 0
        self.attacked: Counter = Counter()  # (attack, status or error) -> count
        self.threads = [threading.Thread(target=self.slow_headers), threading.Thread(target=self.abandon)]
        if attacks:
            self.threads.append(threading.Thread(target=self.attack))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def slow_headers(self) -> None:
        open_sockets: list[socket.socket] = []
        while not self.stop.is_set():
            while len(open_sockets) < self.slow:
                sock = socket.create_connection(("127.0.0.1", self.port))
                sock.sendall(b"POST /v1/models/imdb-bilstm/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                open_sockets.append(sock)
            for sock in select.select(open_sockets, [], [], 0.5)[0]:
                answer = sock.recv(4096)
                self.timed_out += answer.startswith(b"HTTP/1.1 408")
                sock.close()
                open_sockets.remove(sock)
        for sock in open_sockets:
            sock.close()

    def abandon(self) -> None:
        head = "POST /v1/models/ptb-lstm-small-tied/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        head += f"Content-Type: application/json\r\nContent-Length: {len(self.GENERATION)}\r\n\r\n"
        while self.abandon_every > 0 and not self.stop.wait(self.abandon_every):
            with socket.create_connection(("127.0.0.1", self.port)) as sock:
                sock.sendall(head.encode() + self.GENERATION)
            self.abandoned += 1

    def attack(self) -> None:
        attacks = [self.endless_head, self.upgrade, self.sequence_flood]
        for turn in itertools.count():
            if self.stop.wait(0.5):
                return
            attacks[turn % len(attacks)]()

    def endless_head(self) -> None:
        """64 KiB of request line every 10 ms until the server answers (the pause lets it read each piece,
        so that its answer is not lost to a reset)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            try:
                sock.sendall(b"GET /")
                while not self.stop.is_set() and not select.select([sock], [], [], 0.01)[0]:
                    sock.sendall(b"a" * 65536)
                status = int(sock.recv(4096).split(b" ", 2)[1]) if not self.stop.is_set() else "stopped"
            except (OSError, IndexError, ValueError) as err:
                status = type(err).__name__
        self.attacked["endless head", status] += 1

    def upgrade(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(self.UPGRADE)
            response = http.client.HTTPResponse(sock)
            response.begin()
            self.attacked["WebSocket upgrade", response.status] += 1

    def sequence_flood(self) -> None:
        key, path = int(time.monotonic_ns()), "/v2/models/ptb-lstm-small-tied/infer"

        def chunk(parameters: dict) -> int | str:
            text = " ".join(["the company said"] * 600)[:MAX_TEXT_CHARS]
            body = {"inputs": [v2_tensor([text], False)[0]], "parameters": {"max_new_tokens": 1, **parameters}}
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                connection.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
                return connection.getresponse().status
            except (OSError, http.client.HTTPException) as err:
                return type(err).__name__
            finally:
                connection.close()

        chunk({"sequence_id": key, "sequence_start": True})
        with ThreadPoolExecutor(self.FLOOD) as pool:
            statuses = list(pool.map(lambda _: chunk({"sequence_id": key}), range(self.FLOOD)))
        chunk({"sequence_id": key, "sequence_end": True})
        self.attacked.update(("sequence flood", status) for status in statuses)


def memory_mb(pids: list[int], field: str = "VmRSS") -> float:
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            total += next(int(line.split()[1]) / 1024 for line in status if line.startswith(field + ":"))
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folders: list[Path], threads: int, options: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "lightning_modules.cli", "serve", *map(str, folders), "--port", str(port)]
    options = ["--max_attention_cells", str(ATTENTION_CELLS), *SEQUENCES, *options]
    server = subprocess.Popen([*command, "--threads", str(threads), *options], cwd=REPO)
    for _ in range(600):
        if server.poll() is not None:
            sys.exit(f"the server exited with status {server.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return server, port
        except OSError:
            time.sleep(0.2)
    server.terminate()
    sys.exit("the server did not become ready in 120 s")


def soak(folders: list[Path], args, options: list[str]) -> dict:
    """Start ``rnnzoo serve`` with ``options``, warm it up, send the requests and stop it."""
    server, port = start_server(folders, args.threads, options)
    conversations = not args.ray  # several Ray replicas refuse sequences: each run sends the same requests
    try:
        warm_up = make_requests(max(50, args.requests // 20), args.seed + 1, conversations)
        Client(port).run(warm_up, args.concurrency, args.max_seconds)
        pids = replica_processes() if "--ray" in options else [server.pid]
        before = memory_mb(pids)
        client = Client(port)
        with Nuisances(port, args.slow_connections, args.abandon_every, args.attacks) as nuisances:
            requests = make_requests(args.requests, args.seed, conversations)
            seconds = client.run(requests, args.concurrency, args.max_seconds)
        after, peak = memory_mb(pids), memory_mb(pids, "VmHWM")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/metrics")
        metrics = connection.getresponse().read().decode()
        sequences = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("rnnzoo_open_seq"))
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "outcomes": client.outcomes, "seconds": seconds, "before": before, "after": after, "peak": peak,
        "nuisances": nuisances, "sequences": sequences,
    }  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max_seconds", type=float, default=1800, help="stop sending after this long")
    parser.add_argument("--exports", type=Path, default=REPO / "exported" / "soak", help="exported models (cache)")
    parser.add_argument("--threads", type=int, default=1, help="the server's onnxruntime threads per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow_connections", type=int, default=32, help="half-sent headers held open throughout")
    parser.add_argument("--abandon_every", type=float, default=0.5, help="seconds between abandoned generations")
    parser.add_argument(
        "--attacks", action=argparse.BooleanOptionalAction, default=True,
        help="endless heads, WebSocket upgrades and sequence floods beside the requests",
    )  # fmt: skip
    parser.add_argument("--ray", action="store_true", help="compare rnnzoo serve with Ray Serve deployments")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="with --ray: the replica counts")
    args = parser.parse_args()

    folders = list(export_entries(args.exports).values())
    if not args.ray:
        run = soak(folders, args, [])
        nuisances = run["nuisances"]
        print(
            f"beside them: {nuisances.timed_out} slow-header connections closed with a 408 ({args.slow_connections} "
            f"open at a time), {nuisances.abandoned} 1,000-token generations abandoned by their clients"
        )
        for (attack, status), count in sorted(nuisances.attacked.items(), key=str):
            print(f"  {attack}: {count} x {status}")
        print(f"open sequences at the end: {run['sequences']:.0f} (--max_sequences {MAX_SEQUENCES})")
        beside = [
            f"{count} x {attack} -> {status}"
            for (attack, status), count in nuisances.attacked.items()
            if status not in ATTACK_ANSWERS[attack]
        ]
        memory = run["before"], run["after"], run["peak"]
        report(run["outcomes"], run["seconds"], *memory, args, run["sequences"], beside)
        return
    runs = {"rnnzoo serve": soak(folders, args, [])}
    for replicas in args.replicas:
        runs[f"--ray --replicas {replicas}"] = soak(folders, args, ["--ray", "--replicas", str(replicas)])
    compare(runs, args)


def compare(runs: dict[str, dict], args) -> None:
    """The runs side by side; exit status 1 if any valid request failed or an invalid one was not a 4xx."""
    print(f"\n{args.requests} requests per run, concurrency {args.concurrency}, {args.threads} onnxruntime thread(s)")
    print("| service | requests | seconds | requests/s | vs rnnzoo serve | valid p50 / p99 | wrong answers | memory |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    baseline = len(runs["rnnzoo serve"]["outcomes"]) / runs["rnnzoo serve"]["seconds"]
    wrong_total = 0
    for name, run in runs.items():
        outcomes, rate = run["outcomes"], len(run["outcomes"]) / run["seconds"]
        wrong = sum(not expected(valid, outcome) for valid, _, outcome, _ in outcomes)
        wrong_total += wrong + (args.requests - len(outcomes))
        valid = [seconds for is_valid, _, _, seconds in outcomes if is_valid]
        print(
            f"| {name} | {len(outcomes)} | {run['seconds']:.1f} | {rate:.1f} | {rate / baseline:.2f}x "
            f"| {percentiles(valid)} | {wrong} | {run['after']:.0f} MB (peak {run['peak']:.0f} MB) |"
        )
    if wrong_total:
        sys.exit(1)


# What each attacker beside the requests must get: a refused head, an ordinary answer, and for a flood
# of chunks to one sequence its answers or, beyond the queue or the timeout, a 503 or 504.
ATTACK_ANSWERS = {"endless head": {431, "stopped"}, "WebSocket upgrade": {200}, "sequence flood": {200, 503, 504}}


def report(
    outcomes: list, seconds: float, before: float, after: float, peak: float, args, sequences=0.0, beside=()
) -> None:
    statuses = {valid: Counter(outcome for v, _, outcome, _ in outcomes if v == valid) for valid in (True, False)}
    wrong = Counter((label, outcome) for valid, label, outcome, _ in outcomes if not expected(valid, outcome))
    errors = sum(not isinstance(outcome, int) for _, _, outcome, _ in outcomes)
    latencies = {valid: [s for v, _, _, s in outcomes if v == valid] for valid in (True, False)}

    print(f"\nrnnzoo serve soak: {len(outcomes)} of {args.requests} requests sent, concurrency {args.concurrency}")
    print("| requests | seconds | requests/s | valid p50 / p99 | invalid p50 / p99 | connection errors |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {len(outcomes)} | {seconds:.1f} | {len(outcomes) / seconds:.1f} | {percentiles(latencies[True])} "
        f"| {percentiles(latencies[False])} | {errors} |"
    )
    print(f"\nvalid requests by status:   {dict(sorted(statuses[True].items(), key=str))}")
    print(f"invalid requests by status: {dict(sorted(statuses[False].items(), key=str))}")
    print("valid requests by kind:    ", dict(Counter(label for valid, label, _, _ in outcomes if valid)))
    print("invalid requests by kind:  ", dict(Counter(label for valid, label, _, _ in outcomes if not valid)))
    growth = after - before
    print(f"server memory (VmRSS): {before:.0f} MB after warm-up, {after:.0f} MB at the end ({growth:+.0f} MB)")
    print(f"server peak memory (VmHWM): {peak:.0f} MB")
    missed = [f"{count} x {label} -> {outcome}" for (label, outcome), count in wrong.items()] + list(beside)
    if sequences > MAX_SEQUENCES:
        missed.append(f"{sequences:.0f} sequences open (bound {MAX_SEQUENCES})")
    if growth > 50:
        missed.append(f"memory grew by {growth:.0f} MB (target <= 50 MB)")
    if len(outcomes) < args.requests:
        missed.append(f"only {len(outcomes)} requests in {args.max_seconds:g} s")
    print("\ntargets met" if not missed else "\ntargets missed:\n  " + "\n  ".join(missed))
    if missed:
        sys.exit(1)


def expected(valid: bool, outcome: int | str) -> bool:
    """200 for a valid request, a 4xx for an invalid one."""
    if valid:
        return outcome == 200
    return isinstance(outcome, int) and 400 <= outcome < 500


def percentiles(latencies: list[float]) -> str:
    if len(latencies) < 2:
        return "-"
    cuts = statistics.quantiles(latencies, n=100)
    return f"{cuts[49] * 1000:.0f} / {cuts[98] * 1000:.0f} ms"


if __name__ == "__main__":
    main()
