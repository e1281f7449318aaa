"""Training cost: rnnzoo's LanguageModelTask under `Trainer.fit` against a hand-written PyTorch loop.

Every measurement is a fresh process: ``--child plain`` or ``--child rnnzoo`` trains
``warmup + steps`` steps of a 2-layer LSTM language model on PTB and prints the time of the steps
after the warm-up, their minor page faults and the process's peak resident memory (on CUDA also
``torch.cuda.max_memory_allocated``). A configuration is a device, a numeric mode and a batch
size; for each round the parent runs every configuration's children in turn, plain then rnnzoo
(``--rounds`` pairs each), so that neither profits from a quieter moment of the machine, then
prints one table row per configuration and loop and the ratios rnnzoo / plain: tokens/s (the
fastest run of each, target >= 1.0) and peak memory (the largest run of each).

- plain: pytorch/examples ``word_language_model`` in miniature, importing nothing from rnnzoo: the
  parquet read with pyarrow, words split in Python into a dict vocabulary, the stream batchified
  sequence-first (and moved to the device whole), its own model (``nn.Embedding`` -> one
  ``nn.LSTM(num_layers=2)`` -> ``nn.Linear``), cross-entropy, ``loss.item()`` every step,
  ``clip_grad_norm_`` and SGD.
- rnnzoo: ``PTBDataModule`` + ``LanguageModelTask`` (the zoo's ``RNNLanguageModel``, token-mean
  loss, SGD, Lightning's ``gradient_clip_val``) under ``Trainer.fit``, without logger, checkpoints,
  progress bar or validation.

Both have the same sizes, batch, bptt, learning rate, clipping, threads and numerics
(``--precision``): ``fp32`` (TF32 off, cuDNN's included), ``tf32`` (CUDA only: TF32 matmuls and
cuDNN; Lightning via ``torch.set_float32_matmul_precision("high")``) and ``bf16-mixed``
(``torch.autocast`` with bfloat16 around the forward pass and loss; Lightning's
``precision="bf16-mixed"``; TF32 off). Past the end of the training stream both start a new
epoch from a zero state. On CUDA the clock is read after ``torch.cuda.synchronize()``.

The page faults show glibc handing the step's freed heap back to the OS and faulting it in again;
rnnzoo's task stops that when a CPU fit starts (``zoo.common.allocator.keep_freed_memory``). To compare the two
loops without that difference, give both the same malloc settings:

    python benchmarks/train_throughput.py --data_dir ../shared/data/ptb
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 python benchmarks/train_throughput.py

Zaremba et al.'s medium model on a GPU, with the time of one PTB epoch (train tokens / tokens/s)
and an operator profile of rnnzoo's steps per configuration (``--profile``: one more rnnzoo process
each, 20 steps under ``torch.profiler`` after the warm-up, written to ``DIR/<configuration>.txt``):

    python benchmarks/train_throughput.py --data_dir ../shared/data/ptb --hidden 650 --bptt 35 \\
        --batch_sizes 20 128 --device cuda --precision fp32 tf32 bf16-mixed --epoch_time --profile runs/profile
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

PLAIN, RNNZOO = "plain PyTorch loop", "rnnzoo (Lightning)"
PRECISIONS = ("fp32", "tf32", "bf16-mixed")
PROFILE_STEPS = 20


class Config(NamedTuple):
    """One measured configuration: both loops run it."""

    device: str
    precision: str
    batch_size: int

    @property
    def name(self) -> str:
        return f"{self.device}-{self.precision}-batch{self.batch_size}"


CHILD_OPTIONS = ("data_dir", "hidden", "layers", "bptt", "lr", "clip", "warmup", "steps", *Config._fields)


class Stopwatch:
    """Time and minor page faults from ``start()`` to ``stop()``; on CUDA, synchronised at both ends."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.began, self.faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def stop(self, steps: int) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.began
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.faults
        return {"seconds": seconds, "faults_per_step": faults / steps}


def start_profiler(device: str) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    profiler.start()
    return profiler


def write_profile(profiler: torch.profiler.profile, device: str, path: str, title: str) -> None:
    """The operators' self time, top 25; on CUDA sorted by GPU time, then by CPU time (launch overhead)."""
    profiler.stop()
    averages = profiler.key_averages()
    keys = ("self_cuda_time_total", "self_cpu_time_total") if device == "cuda" else ("self_cpu_time_total",)
    tables = [f"sorted by {key}:\n{averages.table(sort_by=key, row_limit=25)}" for key in keys]
    Path(path).write_text("\n\n".join([title, *tables]) + "\n")


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
        return stream[: steps * args.batch_size].view(args.batch_size, steps).t().contiguous().to(args.device)

    stream = tokenize("train")
    train, _valid = batchify(stream), batchify(tokenize("validation"))  # as rnnzoo's setup("fit")
    starts = range(0, train.size(0) - 1, args.bptt)  # one epoch of windows; the last may be shorter

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

    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"  # on by default: fp32 would run cuDNN's LSTM in TF32
    torch.manual_seed(0)
    model = LSTMLanguageModel(len(vocab), args.hidden, args.layers).to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    stopwatch, hidden, total_loss, tokens = Stopwatch(args.device), None, 0.0, 0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            stopwatch.start()
        i = starts[step % len(starts)]
        if i == 0:
            hidden = None  # a new epoch starts from a zero state, as rnnzoo's task does
        seq_len = min(args.bptt, train.size(0) - 1 - i)
        data, targets = train[i : i + seq_len], train[i + 1 : i + 1 + seq_len]
        if hidden is not None:
            hidden = tuple(h.detach() for h in hidden)  # truncated BPTT: keep the values, cut the graph
        optimizer.zero_grad()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"):
            output, hidden = model(data, hidden)
            loss = F.cross_entropy(output.flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        total_loss += loss.item()
        tokens += data.numel() if step >= args.warmup else 0
    return {**stopwatch.stop(args.steps), "tokens": tokens, "vocab": len(vocab), "train_tokens": stream.numel()}


def rnnzoo_child(args) -> dict:
    import lightning as L

    from datamodules import PTBDataModule
    from lightning_modules import LanguageModelTask

    stopwatch, result, profiler = Stopwatch(args.device), {"tokens": 0}, []

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == args.warmup:
                if args.profile_out:
                    profiler.append(start_profiler(args.device))
                stopwatch.start()
            if trainer.global_step >= args.warmup:
                result["tokens"] += batch[0].numel()

        def on_train_end(self, trainer, module):
            result.update(stopwatch.stop(args.steps))
            if profiler:
                ms = 1000 * result["seconds"] / args.steps
                title = f"rnnzoo, {args.steps} steps after {args.warmup} warm-up, {ms:.2f} ms/step under the profiler"
                write_profile(profiler[0], args.device, args.profile_out, title)

    class BenchTask(LanguageModelTask):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=args.lr)

    torch.set_float32_matmul_precision("high" if args.precision == "tf32" else "highest")
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"  # as in the plain loop
    dm = PTBDataModule(data_dir=args.data_dir, batch_size=args.batch_size, bptt=args.bptt)
    torch.manual_seed(0)
    task = BenchTask(dm.vocab_size, embedding_dim=args.hidden, hidden_size=args.hidden, num_layers=args.layers)
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        precision="bf16-mixed" if args.precision == "bf16-mixed" else "32-true",
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
    return {**result, "vocab": dm.vocab_size, "train_tokens": dm.streams["train"].numel()}


def run_child(kind: str, args, config: Config, steps: int | None = None, profile_out: str | None = None) -> dict:
    values = {**vars(args), **config._asdict(), "steps": steps or args.steps}
    options = [item for name in CHILD_OPTIONS for item in (f"--{name}", str(values[name]))]
    options += ["--profile_out", profile_out] if profile_out else []
    done = subprocess.run([sys.executable, __file__, "--child", kind, *options], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {kind} child ({config.name}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def matmul_peak_gflops(device: str, precision: str) -> float:
    """The rate of a large square matmul in the mode's arithmetic (bf16-mixed: bfloat16), over at least 0.5 s."""
    n = 8192 if device == "cuda" else 2048
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def seconds(repeats: int) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    seconds(3)
    repeats = 1
    while (elapsed := seconds(repeats)) < 0.5:
        repeats *= 2
    return 2 * n**3 * repeats / elapsed / 1e9


def flops_per_token(vocab: int, emb: int, hidden: int, layers: int) -> float:
    """Forward matmul FLOPs per token (LSTM gates + output projection), times 3 for fwd + bwd."""
    lstm = sum(2 * 4 * hidden * ((emb if i == 0 else hidden) + hidden) for i in range(layers))
    return 3 * (lstm + 2 * hidden * vocab)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def markdown_table(header: list[str], rows: list[list[str]], text_columns: int) -> str:
    """A Markdown table with aligned columns: the first ``text_columns`` to the left, the rest to the right."""
    widths = [max(map(len, column)) for column in zip(header, *rows, strict=True)]
    left = [i < text_columns for i in range(len(widths))]

    def line(cells: list[str]) -> str:
        aligned = (c.ljust(w) if lj else c.rjust(w) for c, w, lj in zip(cells, widths, left, strict=True))
        return "| " + " | ".join(aligned) + " |"

    rule = "|" + "|".join("-" * (w + 2) if lj else "-" * (w + 1) + ":" for w, lj in zip(widths, left, strict=True))
    return "\n".join([line(header), rule + "|", *map(line, rows)])


def environment(device: str) -> str:
    if device == "cpu":
        return f"cpu, {torch.get_num_threads()} threads, torch {torch.__version__}"
    cudnn = torch.backends.cudnn.version()
    return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}"


def report(args, configs: list[Config], runs: dict, peaks: dict[str, float]) -> None:
    vocab = runs[configs[0], RNNZOO][0]["vocab"]
    per_token = flops_per_token(vocab, args.hidden, args.hidden, args.layers)
    cuda = args.device == "cuda"
    print(
        f"\n{args.layers}x{args.hidden} LSTM LM, vocab {vocab}, bptt {args.bptt}, {args.steps} steps after "
        f"{args.warmup} warm-up, {args.rounds} processes each\n{environment(args.device)}; matmul peak "
        + ", ".join(f"{precision} {peak:.0f} GFLOP/s" for precision, peak in peaks.items())
        + "\n"
    )
    header = ["device", "precision", "batch", "loop", "tokens/s", "ms/step", "GFLOP/s", "% of peak", "faults/step"]
    header += ["peak RSS"] + (["peak CUDA"] if cuda else []) + (["PTB epoch"] if args.epoch_time else [])
    rows, rates, memory = [], {}, {}
    for (config, loop), results in runs.items():
        fastest = min(results, key=lambda r: r["seconds"])
        rates[config, loop] = fastest["tokens"] / fastest["seconds"]
        memory[config, loop] = {
            key: max(r[key] for r in results) for key in ("peak_rss_mib", "peak_cuda_mib") if key in fastest
        }
        gflops = rates[config, loop] * per_token / 1e9
        row = [config.device, config.precision, str(config.batch_size), loop, f"{rates[config, loop]:.0f}"]
        row += [
            f"{1000 * fastest['seconds'] / args.steps:.2f}",
            f"{gflops:.1f}",
            f"{100 * gflops / peaks[config.precision]:.1f}%",
        ]
        row += [f"{fastest['faults_per_step']:.0f}"] + [f"{mib:.0f} MiB" for mib in memory[config, loop].values()]
        if args.epoch_time:
            row.append(duration(fastest["train_tokens"] / rates[config, loop]))
        rows.append(row)
    print(markdown_table(header, rows, text_columns=4))

    print("\nevery run in order, ms/step (faults/step) and peak RSS:")
    for (config, loop), results in runs.items():
        listed = ", ".join(
            f"{1000 * r['seconds'] / args.steps:.1f} ({r['faults_per_step']:.0f}) {r['peak_rss_mib']:.0f} MiB"
            for r in results
        )
        print(f"  {config.name:<24} {loop:<20} {listed}")

    print("\nrnnzoo / plain loop (tokens/s: fastest run of each, target >= 1.0; memory: largest run of each):\n")
    header = ["device", "precision", "batch", "tokens/s", "peak RSS"] + (["peak CUDA"] if cuda else [])
    rows = []
    for config in configs:
        ratios = [rates[config, RNNZOO] / rates[config, PLAIN]]
        ratios += [memory[config, RNNZOO][key] / memory[config, PLAIN][key] for key in memory[config, PLAIN]]
        rows.append([config.device, config.precision, str(config.batch_size), *(f"{ratio:.3f}" for ratio in ratios)])
    print(markdown_table(header, rows, text_columns=3))
    if args.profile:
        print(f"\nrnnzoo's operator profiles: {args.profile}/<device>-<precision>-batch<size>.txt")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="../shared/data/ptb")
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--layers", type=int, default=2)
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch_size", type=int, default=20)
    batch.add_argument("--batch_sizes", type=int, nargs="+", help="measure each of these batch sizes")
    parser.add_argument("--bptt", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=0.25)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="pairs of child processes (plain, rnnzoo)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"], help="tf32 needs cuda")
    parser.add_argument(
        "--profile", metavar="DIR", help="write a torch.profiler table of rnnzoo's steps per configuration"
    )
    parser.add_argument("--epoch_time", action="store_true", help="estimate the time of one PTB training epoch")
    parser.add_argument("--child", choices=["plain", "rnnzoo"], help=argparse.SUPPRESS)
    parser.add_argument("--profile_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())

    if args.child:
        args.precision = args.precision[0]
        result = (plain_child if args.child == "plain" else rnnzoo_child)(args)
        # ru_maxrss is the peak resident set size: kilobytes on Linux, bytes on macOS.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        if args.device == "cuda":
            result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps({**result, "peak_rss_mib": peak}))
        return

    if not (Path(args.data_dir) / "train.parquet").is_file():
        raise SystemExit(f"no train.parquet in {args.data_dir}: give --data_dir the folder of PTB's parquet files")
    if args.device == "cpu" and "tf32" in args.precision:
        parser.error("--precision tf32 is a CUDA tensor-core mode; on cpu use fp32 or bf16-mixed")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda: torch {torch.__version__} sees no CUDA device; run on a GPU machine or use --device cpu"
        )
    from tqdm import tqdm  # here, not at the top: the children's memory is measured

    precisions = list(dict.fromkeys(args.precision))
    configs = [
        Config(args.device, p, b) for p in precisions for b in dict.fromkeys(args.batch_sizes or [args.batch_size])
    ]
    runs = {(config, loop): [] for config in configs for loop in (PLAIN, RNNZOO)}
    for _ in tqdm(range(args.rounds), desc="rounds", disable=None):  # stderr, TTY only: stdout stays the table
        for config in configs:
            runs[config, PLAIN].append(run_child("plain", args, config))
            runs[config, RNNZOO].append(run_child("rnnzoo", args, config))
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        for config in tqdm(configs, desc="profiles", disable=None):
            profile_out = str(Path(args.profile).resolve() / f"{config.name}.txt")
            run_child("rnnzoo", args, config, steps=PROFILE_STEPS, profile_out=profile_out)
    report(args, configs, runs, {precision: matmul_peak_gflops(args.device, precision) for precision in precisions})


if __name__ == "__main__":
    main()
