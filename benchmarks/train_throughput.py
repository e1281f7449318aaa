"""Training cost: rnnzoo's LanguageModelTask under `Trainer.fit` vs a hand-written PyTorch loop.

Each measurement is a fresh process (``--child plain`` or ``--child rnnzoo``) that trains
``warmup + steps`` steps of a word-level LSTM language model on PTB and reports the time of the
steps after the warm-up and its peak resident memory (VmHWM). The parent runs the two children in
turn (plain, rnnzoo, plain, rnnzoo, ...) so that neither profits from a quieter moment of the
machine, then prints a table and the two ratios rnnzoo / plain (tokens/s: best run of each;
peak RSS: largest run of each).

- plain: pytorch/examples ``word_language_model`` in miniature, with nothing from rnnzoo imported:
  the parquet read with pyarrow, words split in Python, a dict vocabulary, its own model
  (``nn.Embedding`` -> one ``nn.LSTM(num_layers=2)`` -> ``nn.Linear``), cross-entropy, SGD and
  ``clip_grad_norm_``.
- rnnzoo: ``PTBDataModule`` + ``LanguageModelTask`` (same sizes, token-mean loss, SGD, clipping by
  Lightning's ``gradient_clip_val``) under ``Trainer.fit`` without logger, checkpoints or progress
  bar.

Both use the same batch, bptt, learning rate and clipping, and the same thread count.

    python benchmarks/train_throughput.py --data_dir ../shared/data/ptb
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PLAIN, RNNZOO = "plain PyTorch loop", "rnnzoo (Lightning)"


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def plain_child(args) -> dict:
    import pyarrow.parquet as pq
    from torch import nn
    from torch.nn import functional as F

    class LSTMLanguageModel(nn.Module):
        def __init__(self, vocab_size: int, size: int, layers: int):
            super().__init__()
            self.encoder = nn.Embedding(vocab_size, size)
            self.rnn = nn.LSTM(size, size, layers, batch_first=True)
            self.decoder = nn.Linear(size, vocab_size)
            for p in self.parameters():
                nn.init.uniform_(p, -0.1, 0.1)

        def forward(self, tokens, state=None):
            out, state = self.rnn(self.encoder(tokens), state)
            return self.decoder(out), state

    vocab: dict[str, int] = {}

    def encode(split: str) -> torch.Tensor:
        ids = []
        for sentence in pq.read_table(Path(args.data_dir) / f"{split}.parquet")["sentence"].to_pylist():
            ids.extend(vocab.setdefault(word, len(vocab)) for word in sentence.split() + ["<eos>"])
        return torch.tensor(ids)

    stream, valid = encode("train"), encode("validation")  # the splits rnnzoo's setup("fit") holds
    steps_per_row = (len(stream) - 1) // args.batch_size
    inputs = stream[: args.batch_size * steps_per_row].view(args.batch_size, -1)
    targets = stream[1 : args.batch_size * steps_per_row + 1].view(args.batch_size, -1)

    torch.manual_seed(0)
    model = LSTMLanguageModel(len(vocab), args.hidden, args.layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    state, start = None, None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start = time.perf_counter()
        window = slice(step * args.bptt, (step + 1) * args.bptt)
        logits, state = model(inputs[:, window], state)
        state = tuple(s.detach() for s in state)  # truncated BPTT: keep the values, cut the graph
        loss = F.cross_entropy(logits.flatten(0, 1), targets[:, window].flatten())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
    return {"seconds": time.perf_counter() - start, "vocab": len(vocab)}


def rnnzoo_child(args) -> dict:
    import lightning as L

    from datamodules import PTBDataModule
    from lightning_modules import LanguageModelTask

    class Stopwatch(L.Callback):
        def __init__(self):
            self.start = self.end = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == args.warmup:
                self.start = time.perf_counter()

        def on_train_end(self, trainer, module):
            self.end = time.perf_counter()

    class BenchTask(LanguageModelTask):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=args.lr)

    dm = PTBDataModule(data_dir=args.data_dir, batch_size=args.batch_size, bptt=args.bptt)
    torch.manual_seed(0)
    task = BenchTask(dm.vocab_size, embedding_dim=args.hidden, hidden_size=args.hidden, num_layers=args.layers)
    stopwatch = Stopwatch()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        gradient_clip_val=args.clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[stopwatch],
    )
    trainer.fit(task, dm)
    return {"seconds": stopwatch.end - stopwatch.start, "vocab": dm.vocab_size}


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


def run_child(kind: str, argv: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", kind, *argv]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {kind} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--rounds", type=int, default=3, help="plain/rnnzoo pairs of child processes")
    parser.add_argument("--child", choices=["plain", "rnnzoo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())

    if args.child:
        result = (plain_child if args.child == "plain" else rnnzoo_child)(args)
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}))
        return

    shared = ("data_dir", "hidden", "layers", "batch_size", "bptt", "lr", "clip", "warmup", "steps")
    argv = [item for name in shared for item in (f"--{name}", str(getattr(args, name)))]
    runs = {PLAIN: [], RNNZOO: []}
    for _ in range(args.rounds):
        runs[PLAIN].append(run_child("plain", argv))
        runs[RNNZOO].append(run_child("rnnzoo", argv))
    vocab = runs[RNNZOO][0]["vocab"]
    tokens = args.steps * args.batch_size * args.bptt
    per_token = flops_per_token(vocab, args.hidden, args.hidden, args.layers)
    peak = matmul_peak_gflops()

    print(
        f"\n{args.layers}x{args.hidden} LSTM LM, vocab {vocab}, batch {args.batch_size} x bptt {args.bptt}, "
        f"{args.steps} steps after {args.warmup} warm-up, {torch.get_num_threads()} threads, "
        f"{args.rounds} processes each; fp32 matmul peak {peak:.0f} GFLOP/s"
    )
    print(f"| {'variant':<20} | {'tokens/s':>9} | {'ms/step':>8} | {'GFLOP/s':>8} | {'% of peak':>9} | {'peak RSS':>9} |")
    print(f"|{'-' * 22}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 11}|")
    rates, memory = {}, {}
    for name, results in runs.items():
        best = min(r["seconds"] for r in results)
        rates[name] = tokens / best
        memory[name] = max(r["peak_rss_mib"] for r in results)
        gflops = rates[name] * per_token / 1e9
        print(
            f"| {name:<20} | {rates[name]:>9.0f} | {1000 * best / args.steps:>8.2f} | {gflops:>8.1f} "
            f"| {100 * gflops / peak:>8.1f}% | {memory[name]:>5.0f} MiB |"
        )
    all_runs = ", ".join(
        f"{name.split()[0]} " + " ".join(f"{1000 * r['seconds'] / args.steps:.1f}" for r in results)
        for name, results in runs.items()
    )
    print(f"\nms/step of every run, in order: {all_runs}")
    print(f"speed ratio rnnzoo / plain loop:  {rates[RNNZOO] / rates[PLAIN]:.3f} (tokens/s, best run of each)")
    print(f"memory ratio rnnzoo / plain loop: {memory[RNNZOO] / memory[PLAIN]:.3f} (peak RSS, largest run of each)")


if __name__ == "__main__":
    main()
