"""``rnnzoo serve`` over loopback HTTP vs calling the same predictor in-process, at several concurrencies.

Each of ``concurrency`` client threads sends one-text requests back to back (``--requests`` in all
per level); the in-process side calls ``predictor.classify([text])`` from as many threads. Prints
requests/s, the service / in-process throughput ratio and p50/p99 latency.

    python benchmarks/service_vs_inprocess.py [--folder EXPORTED_CLASSIFIER] [--threads 1]
"""

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import deploy

REPO = Path(__file__).resolve().parents[1]


def synthetic_classifier(folder: Path) -> Path:
    """An exported 1-layer BiLSTM 2x256 classifier over a 30k vocabulary (the IMDB config's size)."""
    import torch
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    from deploy.export import export
    from zoo import SequenceClassifier
    from zoo.storage.pretrained import save_pretrained

    torch.manual_seed(0)
    vocab = {"<pad>": 0, "<unk>": 1} | {f"w{i}": i + 2 for i in range(29_998)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    arguments = {"vocab_size": 30_000, "num_classes": 2, "embedding_dim": 200, "hidden_size": 256, "pooling": "max"}
    pretrained = save_pretrained(
        folder / "pretrained",
        SequenceClassifier(**arguments),
        arguments=arguments,
        task_arguments={"labels": ["neg", "pos"]},
        tokenizers={"tokenizer": tokenizer.to_str()},
    )
    export(pretrained, folder / "classifier")
    return folder / "classifier"


def run_load(call, texts: list[str], concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()

    def one(text):
        start = time.perf_counter()
        call(text)
        with lock:
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, texts))
    return len(texts) / (time.perf_counter() - start), latencies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", default=None, help="an exported classifier (default: a synthetic IMDB-sized one)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads, both sides")
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--max_wait_ms", type=float, default=0.0, help="the server's --max_wait_ms")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else synthetic_classifier(Path(tmp))
        predictor = deploy.load(folder, threads=args.threads)
        rng = np.random.default_rng(0)
        words = list(predictor.tokenizers["tokenizer"].get_vocab())
        texts = [" ".join(rng.choice(words, 200)) for _ in range(args.requests)]

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "lightning_modules.cli", "serve", str(folder), "--port", str(port)]
            + ["--threads", str(args.threads), "--max_wait_ms", str(args.max_wait_ms)],
            cwd=REPO,
        )
        connections = threading.local()

        def over_http(text):
            if not hasattr(connections, "http"):
                connections.http = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            body = json.dumps({"texts": [text]})
            connections.http.request(
                "POST", f"/v1/models/{folder.name}/predict", body, {"Content-Type": "application/json"}
            )
            response = connections.http.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

        try:
            for _ in range(300):
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/readyz")
                    break
                except OSError:
                    time.sleep(0.2)
            run_load(over_http, texts[:20], 4)  # warm-up
            run_load(lambda text: predictor.classify([text]), texts[:20], 4)
            print(f"\n{folder.name}: {args.requests} one-text requests per level, {args.threads} onnxruntime thread(s)")
            print(
                "| concurrency | in-process req/s | service req/s | ratio | in-process p50 / p99 | service p50 / p99 |"
            )
            print("| ---: | ---: | ---: | ---: | ---: | ---: |")
            for concurrency in args.concurrency:
                local_rate, local = run_load(lambda text: predictor.classify([text]), texts, concurrency)
                http_rate, remote = run_load(over_http, texts, concurrency)
                print(
                    f"| {concurrency} | {local_rate:,.0f} | {http_rate:,.0f} | **{http_rate / local_rate:.2f}** "
                    f"| {percentiles(local)} | {percentiles(remote)} |"
                )
        finally:
            server.terminate()
            server.wait(timeout=30)


def percentiles(latencies: list[float]) -> str:
    cuts = statistics.quantiles(latencies, n=100)
    return f"{cuts[49] * 1000:.1f} / {cuts[98] * 1000:.1f} ms"


if __name__ == "__main__":
    main()
