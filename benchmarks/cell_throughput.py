"""Training speed of every recurrent cell against torch's fused nn.LSTM, and generation speed of
exported language models through onnxruntime.

Training: one layer each (input and hidden ``--hidden_size``, batch ``--batch_size``, float32) on
random inputs; a step is forward, a mean-square loss over every output, backward and an Adam step
(``mingru_throughput.step_seconds``). tokens/s is batch x T over the median step; the ratio is the
cell's tokens/s over nn.LSTM's at the same T (> 1: faster).

Generation (``--generate``): each source (a zoo entry, checkpoint or pretrained folder of a language
model) is exported in float32 and fed one token at a time at batch 1 with its state carried
(``LanguageModelPredictor.step``), the way ``generate`` and the service decode; tokens/s over
``--tokens`` steps after a warm-up, and the ratio to the first source.

    python benchmarks/cell_throughput.py                                  # CPU, T = 256, 1024, 4096
    python benchmarks/cell_throughput.py --device cuda
    python benchmarks/cell_throughput.py --lengths --generate ptb-lstm-small-tied checkpoints/ptb_mamba2/last.ckpt
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mingru_throughput import step_seconds  # this folder is on the path when a benchmark runs as a script
from torch import nn

import deploy
from deploy.export import export, load_source
from lightning_modules.task_io import as_pretrained_folder
from zoo.cells.recurrent import RecurrentStack

CELLS = ("lstm", "gru", "mingru", "mlstm", "slstm", "mamba2", "rglru")


def make_layer(cell: str, size: int) -> nn.Module:
    if cell in ("lstm", "gru"):
        return getattr(nn, cell.upper())(size, size, batch_first=True)
    return RecurrentStack(size, size, num_layers=1, cell=cell)


def training(args) -> None:
    device = torch.device(args.device)
    rates = {}
    for time_steps in args.lengths:
        for cell in args.cells:
            torch.manual_seed(0)
            model = make_layer(cell, args.hidden_size).to(device)
            x = torch.randn(args.batch_size, time_steps, args.hidden_size, device=device)
            median = statistics.median(step_seconds(model, x, args))
            rates[time_steps, cell] = (args.batch_size * time_steps / median, median)
            print(f"  T={time_steps} {cell}: {1000 * median:.1f} ms/step", flush=True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"\ntraining step (forward + backward + Adam), 1 layer, input = hidden = {args.hidden_size}, batch "
        f"{args.batch_size}, float32, {where}, torch {torch.__version__}"
    )
    print("| T | cell | tokens/s | ms/step | vs nn.LSTM |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for time_steps in args.lengths:
        reference = rates.get((time_steps, "lstm"))
        for cell in args.cells:
            rate, seconds = rates[time_steps, cell]
            ratio = f"{rate / reference[0]:.2f}x" if reference else "-"
            name = f"nn.{cell.upper()}" if cell in ("lstm", "gru") else cell
            print(f"| {time_steps} | {name} | {rate:.0f} | {1000 * seconds:.1f} | {ratio} |")


def generation(args) -> None:
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, source in enumerate(args.generate):
            folder = Path(tmp) / str(index)
            with as_pretrained_folder(source) as (pretrained, _):
                export(pretrained, folder)
                cell = load_source(pretrained)[0].config.arguments["cell"]
            predictor = deploy.load(folder, threads=args.threads or 1)
            state, token = predictor.zero_state(1), np.zeros((1, 1), dtype=np.int64)
            for _ in range(10):
                _, state = predictor.step(token, state)
            start = time.perf_counter()
            for _ in range(args.tokens):
                logits, state = predictor.step(token, state)
                token = logits[:, -1].argmax(-1, keepdims=True)
            rate = args.tokens / (time.perf_counter() - start)
            state_floats = sum(value.size for value in state.values())
            rates.append((source, cell, state_floats, rate))
    print(f"\ngeneration through onnxruntime, batch 1, one token per call, {args.threads or 1} thread(s), float32")
    print("| source | cell | state floats | tokens/s | vs first |")
    print("| --- | --- | ---: | ---: | ---: |")
    for source, cell, state_floats, rate in rates:
        print(f"| `{source}` | {cell} | {state_floats} | {rate:.0f} | {rate / rates[0][3]:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training only)")
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="*", default=[256, 1024, 4096], help="none: skip training")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min_steps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per cell and length, at least")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's; generation: 1)")
    parser.add_argument("--generate", nargs="*", default=[], help="language models to time through onnxruntime")
    parser.add_argument("--tokens", type=int, default=500, help="generated tokens per source")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lengths:
        training(args)
    if args.generate:
        generation(args)


if __name__ == "__main__":
    main()
