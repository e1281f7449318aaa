"""Long-range memory: the adding problem at T = 1000 for every cell after the same training steps.

The harness of ``benchmarks/vanishing_gradients.py`` (the task, a linear head on the last output,
Adam with clipped gradients, the test set and its "solved" criterion: within 0.04 of the target) with
one model per cell, all one-layer ``zoo.RecurrentStack``s of the same width. Always predicting 1
scores an MSE of 0.167; a model that carries the two marked numbers across the whole sequence
drives the MSE towards 0.

    python benchmarks/long_range.py                     # T = 1000, 300 steps each
    python benchmarks/long_range.py --steps 1000 --cells lstm mamba2 rglru
"""

import argparse
import math
import time

import torch
from vanishing_gradients import TOLERANCE, AddingModel, adding_problem, evaluate, train  # a sibling script

CELLS = ("lstm", "gru", "mingru", "mlstm", "slstm", "mamba2", "rglru")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--steps", type=int, default=300, help="training steps per cell")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--test_size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    test_x, test_y = adding_problem(args.test_size, args.length, torch.Generator().manual_seed(args.seed + 1))
    baseline = ((test_y - 1.0).abs() < TOLERANCE).float().mean().item()
    rows = []
    for cell in args.cells:
        torch.manual_seed(args.seed)
        options = {"heads": args.heads} if cell in ("mlstm", "slstm", "mamba2") else {}
        model = AddingModel(args.hidden_size, cell=cell, **options)
        start = time.perf_counter()
        train(model, args.length, args, torch.Generator().manual_seed(args.seed + 3))
        seconds = time.perf_counter() - start
        mse, solved = evaluate(model, test_x, test_y)
        parameters = sum(p.numel() for p in model.parameters())
        rows.append((cell, parameters, mse, solved, seconds))
        print(f"  {cell}: MSE {mse:.4f}, solved {solved:.1%}, {seconds:.0f} s", flush=True)

    print(
        f"\nadding problem, T = {args.length}, {args.steps} steps of Adam (lr {args.lr}, batch {args.batch_size}, "
        f"clip {args.clip}), hidden {args.hidden_size}, {torch.get_num_threads()} threads; always predicting 1: "
        f"MSE 0.167, solved {baseline:.0%}\n"
    )
    print("| cell | parameters | test MSE | solved (within 0.04) | training time |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for cell, parameters, mse, solved, seconds in rows:
        shown = f"{mse:.4f}" if math.isfinite(mse) else "diverged"
        print(f"| {cell} | {parameters} | {shown} | {solved:.1%} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
