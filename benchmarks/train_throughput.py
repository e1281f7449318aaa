"""Training cost: rnnzoo's LanguageModelTask under `Trainer.fit` against a hand-written PyTorch loop.

Every measurement is a fresh process: ``--child plain`` or ``--child rnnzoo`` trains
``warmup + steps`` steps of a 2-layer LSTM language model on PTB and prints the time of the steps
after the warm-up, their minor page faults and the process's peak resident memory. The parent runs
the children in turn, plain, rnnzoo, plain, rnnzoo, ... (``--rounds`` pairs), so that neither
profits from a quieter moment of the machine, then prints a table and two ratios rnnzoo / plain:
tokens/s (the fastest run of each) and peak RSS (the largest run of each).

- plain: pytorch/examples ``word_language_model`` in miniature, importing nothing from rnnzoo: the
  parquet read with pyarrow, words split in Python into a dict vocabulary, the stream batchified
  sequence-first, its own model (``nn.Embedding`` -> one ``nn.LSTM(num_layers=2)`` ->
  ``nn.Linear``), cross-entropy, ``loss.item()`` every step, ``clip_grad_norm_`` and SGD.
- rnnzoo: ``PTBDataModule`` + ``LanguageModelTask`` (the zoo's ``RNNLanguageModel``, token-mean
  loss, SGD, Lightning's ``gradient_clip_val``) under ``Trainer.fit``, without logger, checkpoints,
  progress bar or validation.

Both have the same sizes, batch, bptt, learning rate, clipping and threads. The page faults show
glibc handing the step's freed heap back to the OS and faulting it in again; rnnzoo's task stops
that when a fit starts (``keep_freed_heap_memory``). To compare the two loops without that
difference, give both the same malloc settings:

    python benchmarks/train_throughput.py --data_dir ../shared/data/ptb
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 python benchmarks/train_throughput.py
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

PLAIN, RNNZOO = "plain PyTorch loop", "rnnzoo (Lightning)"


class Stopwatch:
    """Time and minor page faults from ``start()`` to ``stop()``."""

    def start(self):
        self.began, self.faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def stop(self, steps: int) -> dict:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.faults
        return {"seconds": time.perf_counter() - self.began, "faults_per_step": faults / steps}


def plain_child(args) -> dict:
    import pyarrow.parquet as pq
    from torch import nn
    from torch.nn import functional as F

    vocab: dict[str, int] = {}

    def tokenize(split: str) -> torch.Tensor:
        ids = []
        for line in pq.read_table(Path(args.data_dir) / f"{split}.parquet")["sentence"].to_pylist():
            ids.extend(vocab.setdefault(word, len(vocab)) for word in line.split() + ["<eos>"])
        return torch.tensor(ids)

    def batchify(stream: torch.Tensor) -> torch.Tensor:  # (steps, batch), each column a piece of the stream
        steps = stream.numel() // args.batch_size
        return stream[: steps * args.batch_size].view(args.batch_size, steps).t().contiguous()

    train, _valid = batchify(tokenize("train")), batchify(tokenize("validation"))  # as rnnzoo's setup("fit")

    class LSTMLanguageModel(nn.Module):
        def __init__(self, vocab_size: int, size: int, layers: int):
            super().__init__()
            self.encoder = nn.Embedding(vocab_size, size)
            self.rnn = nn.LSTM(size, size, layers)
            self.decoder = nn.Linear(size, vocab_size)
            for p in self.parameters():
                nn.init.uniform_(p, -0.1, 0.1)

        def forward(self, tokens, hidden=None):
            output, hidden = self.rnn(self.encoder(tokens), hidden)
            return self.decoder(output), hidden

    torch.manual_seed(0)
    model = LSTMLanguageModel(len(vocab), args.hidden, args.layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    stopwatch, hidden, total_loss = Stopwatch(), None, 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            stopwatch.start()
        i = step * args.bptt
        data, targets = train[i : i + args.bptt], train[i + 1 : i + 1 + args.bptt]
        if hidden is not None:
            hidden = tuple(h.detach() for h in hidden)  # truncated BPTT: keep the values, cut the graph
        optimizer.zero_grad()
        output, hidden = model(data, hidden)
        loss = F.cross_entropy(output.flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        total_loss += loss.item()
    return {**stopwatch.stop(args.steps), "vocab": len(vocab)}


def rnnzoo_child(args) -> dict:
    import lightning as L

    from datamodules import PTBDataModule
    from lightning_modules import LanguageModelTask

    stopwatch, result = Stopwatch(), {}

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == args.warmup:
                stopwatch.start()

        def on_train_end(self, trainer, module):
            result.update(stopwatch.stop(args.steps))

    class BenchTask(LanguageModelTask):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=args.lr)

    dm = PTBDataModule(data_dir=args.data_dir, batch_size=args.batch_size, bptt=args.bptt)
    torch.manual_seed(0)
    task = BenchTask(dm.vocab_size, embedding_dim=args.hidden, hidden_size=args.hidden, num_layers=args.layers)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        gradient_clip_val=args.clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Timing()],
    )
    trainer.fit(task, dm)
    return {**result, "vocab": dm.vocab_size}


def run_child(kind: str, args) -> dict:
    shared = ("data_dir", "hidden", "layers", "batch_size", "bptt", "lr", "clip", "warmup", "steps")
    options = [item for name in shared for item in (f"--{name}", str(getattr(args, name)))]
    done = subprocess.run([sys.executable, __file__, "--child", kind, *options], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {kind} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def matmul_peak_gflops(n: int = 2048, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def flops_per_token(vocab: int, emb: int, hidden: int, layers: int) -> float:
    """Forward matmul FLOPs per token (LSTM gates + output projection), times 3 for fwd + bwd."""
    lstm = sum(2 * 4 * hidden * ((emb if i == 0 else hidden) + hidden) for i in range(layers))
    return 3 * (lstm + 2 * hidden * vocab)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="../shared/data/ptb")
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=0.25)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="pairs of child processes (plain, rnnzoo)")
    parser.add_argument("--child", choices=["plain", "rnnzoo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())

    if args.child:
        result = (plain_child if args.child == "plain" else rnnzoo_child)(args)
        # ru_maxrss is the peak resident set size: kilobytes on Linux, bytes on macOS.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        print(json.dumps({**result, "peak_rss_mib": peak}))
        return

    from tqdm import tqdm  # here, not at the top: the children's memory is measured

    runs = {PLAIN: [], RNNZOO: []}
    for _ in tqdm(range(args.rounds), desc="rounds", disable=None):  # stderr, TTY only: stdout stays the table
        runs[PLAIN].append(run_child("plain", args))
        runs[RNNZOO].append(run_child("rnnzoo", args))
    vocab = runs[RNNZOO][0]["vocab"]
    tokens = args.steps * args.batch_size * args.bptt
    per_token = flops_per_token(vocab, args.hidden, args.hidden, args.layers)
    peak = matmul_peak_gflops()

    print(
        f"\n{args.layers}x{args.hidden} LSTM LM, vocab {vocab}, batch {args.batch_size} x bptt {args.bptt}, "
        f"{args.steps} steps after {args.warmup} warm-up, {torch.get_num_threads()} threads, "
        f"{args.rounds} processes each; fp32 matmul peak {peak:.0f} GFLOP/s"
    )
    header = ("variant", "tokens/s", "ms/step", "GFLOP/s", "% of peak", "faults/step", "peak RSS")
    print("| " + " | ".join(f"{h:<20}" if i == 0 else f"{h:>11}" for i, h in enumerate(header)) + " |")
    print("|" + "|".join("-" * (22 if i == 0 else 13) for i in range(len(header))) + "|")
    rates, memory = {}, {}
    for name, results in runs.items():
        fastest = min(results, key=lambda r: r["seconds"])
        rates[name] = tokens / fastest["seconds"]
        memory[name] = max(r["peak_rss_mib"] for r in results)
        gflops = rates[name] * per_token / 1e9
        cells = (
            f"{rates[name]:.0f}",
            f"{1000 * fastest['seconds'] / args.steps:.2f}",
            f"{gflops:.1f}",
            f"{100 * gflops / peak:.1f}%",
            f"{fastest['faults_per_step']:.0f}",
            f"{memory[name]:.0f} MiB",
        )
        print(f"| {name:<20} | " + " | ".join(f"{cell:>11}" for cell in cells) + " |")
    print("\nevery run in order, ms/step (faults/step) and peak RSS:")
    for name, results in runs.items():
        listed = ", ".join(
            f"{1000 * r['seconds'] / args.steps:.1f} ({r['faults_per_step']:.0f}) {r['peak_rss_mib']:.0f} MiB"
            for r in results
        )
        print(f"  {name:<20} {listed}")
    print(f"\nspeed ratio rnnzoo / plain loop:  {rates[RNNZOO] / rates[PLAIN]:.3f} (tokens/s, fastest run of each)")
    print(f"memory ratio rnnzoo / plain loop: {memory[RNNZOO] / memory[PLAIN]:.3f} (peak RSS, largest run of each)")


if __name__ == "__main__":
    main()
