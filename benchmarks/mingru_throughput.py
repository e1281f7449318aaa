"""Training speed of minGRU/minLSTM (log-space parallel scan) against torch's fused nn.GRU/nn.LSTM.

One layer each, same input and hidden size, on random inputs: a training step is forward, a mean-square
loss over every output, backward and an Adam step. For each sequence length the four models run in
turn (GRU, mingru, LSTM, minlstm), each ``--warmup`` steps and then timed steps until ``--seconds``
have passed (at least ``--min_steps``); tokens/s is batch x T over the median step time. The ratio is
the minimal cell's tokens/s over its torch counterpart's (> 1: the minimal cell trains faster).

    python benchmarks/mingru_throughput.py                      # CPU, T = 35, 256, 1024
    python benchmarks/mingru_throughput.py --device cuda --lengths 35 256 1024 4096
"""

import argparse
import statistics
import time

import torch
from torch import nn

from zoo.cells.recurrent import RecurrentStack

PAIRS = (("gru", "mingru"), ("lstm", "minlstm"))
TORCH_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


def make_model(cell: str, input_size: int, hidden_size: int) -> nn.Module:
    if cell in TORCH_CELLS:
        return TORCH_CELLS[cell](input_size, hidden_size, batch_first=True)
    return RecurrentStack(input_size, hidden_size, num_layers=1, cell=cell)


def step_seconds(model: nn.Module, x: torch.Tensor, args) -> list[float]:
    """Wall time of each timed training step (forward, backward, Adam) after the warm-up."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    synchronize = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        out, _ = model(x)  # (B, T, H)
        out.square().mean().backward()
        optimizer.step()

    for _ in range(args.warmup):
        train_step()
    synchronize()
    times, began = [], time.perf_counter()
    while len(times) < args.min_steps or time.perf_counter() - began < args.seconds:
        start = time.perf_counter()
        train_step()
        synchronize()  # CUDA runs asynchronously: wait for the step before reading the clock
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--input_size", type=int, default=256)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[35, 256, 1024])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--min_steps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model and length, at least")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from tqdm import tqdm  # stderr, TTY only: stdout stays the table

    rates = {}
    runs = [(time_steps, cell) for time_steps in args.lengths for pair in PAIRS for cell in pair]
    for time_steps, cell in tqdm(runs, desc="models", disable=None):
        torch.manual_seed(0)
        model = make_model(cell, args.input_size, args.hidden_size).to(device)
        x = torch.randn(args.batch_size, time_steps, args.input_size, device=device)
        median = statistics.median(step_seconds(model, x, args))
        rates[time_steps, cell] = (args.batch_size * time_steps / median, median)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"\ntraining step (forward + backward + Adam), 1 layer, input {args.input_size}, hidden "
        f"{args.hidden_size}, batch {args.batch_size}, float32, {where}, torch {torch.__version__}"
    )
    print("| T    | cell    | tokens/s  | ms/step  | vs torch cell |")
    print("|------|---------|-----------|----------|---------------|")
    for time_steps in args.lengths:
        for reference, minimal in PAIRS:
            for cell in (reference, minimal):
                rate, seconds = rates[time_steps, cell]
                ratio = f"{rate / rates[time_steps, reference][0]:.2f}x" if cell == minimal else "1.00x"
                name = f"nn.{reference.upper()}" if cell == reference else cell
                print(f"| {time_steps:<4} | {name:<7} | {rate:>9.0f} | {1000 * seconds:>8.1f} | {ratio:>13} |")


if __name__ == "__main__":
    main()
