"""Training throughput: rnnzoo's LightningModule under `Trainer.fit` vs a plain PyTorch loop.

Both train the same network (``zoo.RNNLanguageModel``) on the same PTB windows with the same
batch, bptt, optimizer and gradient clipping, one after the other in this process, and the
achieved GFLOP/s is compared with this machine's fp32 matmul peak, measured in the same run.

    python benchmarks/train_throughput.py --data_dir ../shared/data/ptb
"""

import argparse
import time

import lightning as L
import torch
import torch.nn.functional as F

from datamodules import PTBDataModule
from lightning_modules import LanguageModelTask
from zoo import RNNLanguageModel, detach_state


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


def plain_loop(windows, args, vocab) -> float:
    torch.manual_seed(0)
    model = RNNLanguageModel(vocab, args.hidden, args.hidden, args.layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    state, start = None, None
    for step, (inputs, targets) in enumerate(windows):
        if step == args.warmup:
            start = time.perf_counter()
        logits, state = model(inputs, state)
        state = detach_state(state)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
    return time.perf_counter() - start


class Stopwatch(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.end = time.perf_counter()


class BenchTask(LanguageModelTask):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def lightning_fit(dm, args) -> float:
    torch.manual_seed(0)
    task = BenchTask(dm.vocab_size, embedding_dim=args.hidden, hidden_size=args.hidden, num_layers=args.layers)
    stopwatch = Stopwatch(args.warmup)
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
    return stopwatch.end - stopwatch.start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="../shared/data/ptb")
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=20)
    parser.add_argument("--clip", type=float, default=0.25)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    dm = PTBDataModule(data_dir=args.data_dir, batch_size=args.batch_size, bptt=args.bptt)
    dm.setup("fit")
    windows = list(dm.train_dataloader())[: args.warmup + args.steps]
    tokens = args.steps * args.batch_size * args.bptt
    per_token = flops_per_token(dm.vocab_size, args.hidden, args.hidden, args.layers)
    peak = matmul_peak_gflops()

    # Alternate the two so that neither profits from a quieter moment of the machine.
    times = {"plain PyTorch loop": [], "rnnzoo (Lightning)": []}
    for _ in range(2):
        times["plain PyTorch loop"].append(plain_loop(windows, args, dm.vocab_size))
        times["rnnzoo (Lightning)"].append(lightning_fit(dm, args))

    print(
        f"\n{args.layers}x{args.hidden} LSTM LM, vocab {dm.vocab_size}, batch {args.batch_size} x bptt {args.bptt}, "
        f"{args.steps} steps after {args.warmup} warm-up, {torch.get_num_threads()} threads; "
        f"fp32 matmul peak {peak:.0f} GFLOP/s"
    )
    print(f"| {'variant':<20} | {'tokens/s':>9} | {'ms/step':>8} | {'GFLOP/s':>8} | {'% of peak':>9} |")
    print(f"|{'-' * 22}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 11}|")
    rates = {}
    for name, runs in times.items():
        best = min(runs)
        rates[name] = tokens / best
        gflops = rates[name] * per_token / 1e9
        print(
            f"| {name:<20} | {rates[name]:>9.0f} | {1000 * best / args.steps:>8.2f} | {gflops:>8.1f} "
            f"| {100 * gflops / peak:>8.1f}% |"
        )
    ratio = rates["rnnzoo (Lightning)"] / rates["plain PyTorch loop"]
    print(f"\nratio rnnzoo / plain loop: {ratio:.3f} (tokens/s, best of 2 runs each)")


if __name__ == "__main__":
    main()
