"""Tokenisation + numericalisation throughput of IMDB train: `tokenizers` vs plain Python.

Both produce the same ids with the same vocabulary (checked on every review); the Python baseline
is the usual ``re.findall`` + ``dict.get`` loop. Reviews are not truncated here.

    python benchmarks/tokenize_throughput.py --data_dir ../shared/data/imdb
"""

import argparse
import re
import time

from tqdm import tqdm

from datamodules import IMDBDataModule


def python_baseline(texts: list[str], vocab: dict[str, int], unk_id: int) -> list[list[int]]:
    word = re.compile(r"\w+|[^\w\s]+")  # the same split as tokenizers' Whitespace pre-tokenizer
    return [[vocab.get(w, unk_id) for w in word.findall(t.replace("<br />", " ").lower())] for t in texts]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="../shared/data/imdb")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    dm = IMDBDataModule(data_dir=args.data_dir, val_size=2)
    texts = list(dm.splits["train"]["text"]) + list(dm.splits["validation"]["text"])
    tokenizer = dm.tokenizer
    tokenizer.no_truncation()
    vocab, unk_id = tokenizer.get_vocab(), tokenizer.token_to_id("<unk>")

    paths = {
        "tokenizers encode_batch": lambda: [e.ids for e in tokenizer.encode_batch(texts)],
        # no character offsets: the fastest batched call of the library
        "tokenizers encode_batch_fast": lambda: [e.ids for e in tokenizer.encode_batch_fast(texts)],
        "plain Python (re + dict)": lambda: python_baseline(texts, vocab, unk_id),
    }
    timings, outputs = {name: [] for name in paths}, {}
    for _ in tqdm(range(args.repeats), desc="repeats", disable=None):  # stderr, TTY only: stdout stays the table
        for name, run in paths.items():
            start = time.perf_counter()
            outputs[name] = run()
            timings[name].append(time.perf_counter() - start)
    fast, slow = outputs["tokenizers encode_batch"], outputs["plain Python (re + dict)"]
    mismatches = sum(a != b for a, b in zip(fast, slow, strict=True))
    tokens = sum(map(len, fast))

    print(f"\nIMDB train: {len(texts):,} reviews, {tokens:,} tokens, vocabulary {len(vocab):,}; best of {args.repeats}")
    print(f"| {'path':<30} | {'seconds':>8} | {'tokens/s':>12} |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 14}|")
    rates = {}
    for name, runs in timings.items():
        rates[name] = tokens / min(runs)
        print(f"| {name:<30} | {min(runs):>8.2f} | {rates[name]:>12,.0f} |")
    best = max(rates[name] for name in paths if name.startswith("tokenizers"))
    ratio = best / rates["plain Python (re + dict)"]
    print(f"\nspeed-up best tokenizers path / Python: {ratio:.2f}x; reviews tokenised differently: {mismatches}")


if __name__ == "__main__":
    main()
