"""What keeping a conversation's state buys: a conversation of ``--turns`` chunks of ``--chunk_tokens``
words from the PTB test split, sent to ``rnnzoo serve`` (the shipped ``ptb-lstm-small-tied``, exported
once into ``--exports``) with Triton's HTTP client, each turn answered with a 10-token greedy
continuation. Kept as a sequence (``sequence_id``: each turn sends its chunk) against resending the
whole history every turn, as a stateless API forces. Prints, side by side in one run, the latency of
the last turn and of the whole conversation (medians of ``--repeats`` conversations, the two ways
alternating), the tokens the model read, and the ratios.

    python benchmarks/sequence_vs_resend.py [--turns 20] [--chunk_tokens 30] [--repeats 5]
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import tritonclient.http as httpclient
from soak_service import REPO, export_entries, start_server

ENTRY = "ptb-lstm-small-tied"
NEW_TOKENS = 10


def chunks(data: Path, turns: int, size: int, offset: int) -> list[str]:
    words = " ".join(pq.read_table(data / "test.parquet", columns=["sentence"]).column(0).to_pylist()).split()
    start = offset * turns * size
    return [" ".join(words[start + i * size : start + (i + 1) * size]) for i in range(turns)]


def turn(client, text: str, **sequence) -> float:
    tensor = httpclient.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
    start = time.perf_counter()
    client.infer(ENTRY, [tensor], parameters={"max_new_tokens": NEW_TOKENS, "temperature": 0}, **sequence)
    return time.perf_counter() - start


def kept(client, conversation: list[str], key: int) -> list[float]:
    last = len(conversation) - 1
    return [
        turn(client, chunk, sequence_id=key, sequence_start=i == 0, sequence_end=i == last)
        for i, chunk in enumerate(conversation)
    ]


def resent(client, conversation: list[str]) -> list[float]:
    return [turn(client, " ".join(conversation[: i + 1])) for i in range(len(conversation))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--chunk_tokens", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("RNNZOO_SHARED_DATA", REPO.parent / "shared" / "data")) / "ptb"
    )
    parser.add_argument("--exports", type=Path, default=REPO / "exported" / "soak", help="exported models (cache)")
    args = parser.parse_args()

    folder = export_entries(args.exports)[ENTRY]
    server, port = start_server([folder], threads=1, options=[])
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=600)
        times: dict[str, list[list[float]]] = {"sequence": [], "resend": []}
        kept(client, chunks(args.data, 3, args.chunk_tokens, 0), key=1)  # warm-up
        for repeat in range(args.repeats):
            conversation = chunks(args.data, args.turns, args.chunk_tokens, repeat + 1)
            times["sequence"].append(kept(client, conversation, key=repeat + 2))
            times["resend"].append(resent(client, conversation))
    finally:
        server.terminate()
        server.wait(timeout=60)

    turns, size = args.turns, args.chunk_tokens
    # Tokens the model reads: each turn's text (and the token before it), then the continuation's steps.
    read = {
        "sequence": turns * (size + 1 + NEW_TOKENS),
        "resend": sum((i + 1) * size + 1 + NEW_TOKENS for i in range(turns)),
    }
    last = {way: statistics.median(run[-1] for run in runs) for way, runs in times.items()}
    total = {way: statistics.median(sum(run) for run in runs) for way, runs in times.items()}
    print(
        f"\n{turns} turns of {size} words, a {NEW_TOKENS}-token greedy answer each, {args.repeats} conversations a way"
    )
    print("| conversation | last turn | whole conversation | tokens read |")
    print("| --- | ---: | ---: | ---: |")
    for way in times:
        print(f"| {way} | {last[way] * 1000:.1f} ms | {total[way] * 1000:.0f} ms | {read[way]:,} |")
    ratio = {
        key: values["resend"] / values["sequence"] for key, values in (("last", last), ("total", total), ("read", read))
    }
    print(f"| resend / sequence | {ratio['last']:.1f}x | {ratio['total']:.1f}x | {ratio['read']:.1f}x |")


if __name__ == "__main__":
    main()
