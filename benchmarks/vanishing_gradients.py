"""Vanishing gradients on the adding problem: an Elman RNN with torch's default, orthogonal and identity
(IRNN) recurrent matrices against an LSTM and a GRU, all one-layer ``zoo.RecurrentStack``s.

The adding problem (Hochreiter & Schmidhuber 1997; Le, Jaitly & Hinton 2015): every step carries a
number drawn from [0, 1] and a marker that is 1 at exactly two steps, one in each half of the
sequence; the target is the sum of the two marked numbers, predicted by a linear head on the last
hidden state (MSE loss). Always predicting 1 scores an MSE of 1/6; a test sequence counts as solved
when the prediction is within 0.04 of its target.

(a) At initialisation: ``||dL/dh_t||`` (mean over a batch) against the distance ``T - t`` from the loss.
(b) After ``--steps`` steps of Adam (gradient norm clipped): the test MSE and the fraction solved.

    python benchmarks/vanishing_gradients.py                         # T = 100, 200, 400: ~3 minutes on one core
    python benchmarks/vanishing_gradients.py --steps 3000 --lr 3e-3  # a longer run
"""

import argparse
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo import RecurrentStack

TOLERANCE = 0.04

# Label -> the RecurrentStack options of that model. IRNN: identity recurrence, zero biases, ReLU.
MODELS = {
    "RNN tanh, default init": {"cell": "rnn"},
    "RNN tanh, orthogonal": {"cell": "rnn", "recurrent_init": "orthogonal"},
    "IRNN (ReLU, identity)": {"cell": "rnn", "recurrent_init": "identity", "nonlinearity": "relu"},
    "LSTM": {"cell": "lstm"},
    "GRU": {"cell": "gru"},
}


def adding_problem(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(B, T, 2)`` (number, marker) and targets ``(B,)``, the sum of the two marked numbers."""
    numbers = torch.rand(batch, length, generator=generator)  # (B, T)
    rows = torch.arange(batch)
    first = torch.randint(0, length // 2, (batch,), generator=generator)
    second = torch.randint(length // 2, length, (batch,), generator=generator)
    markers = torch.zeros(batch, length)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    return torch.stack([numbers, markers], dim=-1), numbers[rows, first] + numbers[rows, second]


class AddingModel(nn.Module):
    def __init__(self, hidden_size: int, **stack_options):
        super().__init__()
        self.rnn = RecurrentStack(2, hidden_size, **stack_options)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, 2)`` -> predictions ``(B,)``."""
        states, _ = self.rnn(x)  # (B, T, H)
        return self.head(states[:, -1]).squeeze(-1)


def gradient_norms(model: AddingModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||dL/dh_t||`` averaged over the batch, indexed by the distance ``T - t`` (0: the last step).

    The stack runs one step per call: in a whole-sequence call the path from ``h_t`` to ``h_{t+1}``
    stays inside the fused kernel, and the gradient of its output at step ``t`` holds only the loss's
    direct use of it (none before ``T``). For the LSTM, ``h_t`` is the output, not the cell ``c_t``.
    It runs on a float64 copy of the model: the vanishing norms fall below float32's range within
    about 110 steps, float64 holds them for the whole of T = 400.
    """
    model, x, y = copy.deepcopy(model).double(), x.double(), y.double()
    state, states = None, []
    for t in range(x.size(1)):
        out, state = model.rnn(x[:, t : t + 1], state)
        h = out[:, 0]  # (B, H)
        h.retain_grad()
        states.append(h)
        # Carry h itself, not the kernel's copy of it in ``state``, so every later step depends on it.
        state = (h.unsqueeze(0), state[1]) if isinstance(state, tuple) else h.unsqueeze(0)
    prediction = model.head(states[-1]).squeeze(-1)
    # Summed, not averaged, so that each sequence's gradient is that of its own loss.
    F.mse_loss(prediction, y, reduction="sum").backward()
    return torch.stack([h.grad.norm(dim=-1).mean() for h in reversed(states)])  # (T,)


def train(model: AddingModel, length: int, args, generator: torch.Generator) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    for _ in range(args.steps):
        x, y = adding_problem(args.batch_size, length, generator)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)  # exploding gradients: the other half of the picture
        optimizer.step()


@torch.no_grad()
def evaluate(model: AddingModel, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Test MSE and the fraction of sequences solved (within ``TOLERANCE`` of the target)."""
    prediction = model(x)
    return F.mse_loss(prediction, y).item(), ((prediction - y).abs() < TOLERANCE).float().mean().item()


def trained_cell(mse: float, solved: float) -> str:
    return f"{mse:.3f} / {solved:.0%}" if math.isfinite(mse) else "diverged"


def markdown_table(lengths: list[int], cell) -> str:
    rows = ["| T | " + " | ".join(MODELS) + " |", "| ---: |" + " ---: |" * len(MODELS)]
    rows += [f"| {length} | " + " | ".join(cell(length, label) for label in MODELS) + " |" for length in lengths]
    return "\n".join(rows)


def plot(path: str, norms: dict, results: dict, baseline: float, steps: int) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend; Agg draws the PNG

    lengths = list(norms)
    fig = Figure(figsize=(4.2 * (len(lengths) + 1), 4.2), layout="constrained")
    axes = fig.subplots(1, len(lengths) + 1)
    for ax, length in zip(axes, lengths, strict=False):
        for label in MODELS:
            ax.semilogy(norms[length][label].numpy(), label=label)
        ax.set(title=f"T = {length}: at initialisation", xlabel="distance from the loss, T − t")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(r"$\|\partial L / \partial h_t\|$ (mean over a batch)")
    axes[0].legend(fontsize="small")
    accuracy = axes[-1]
    for label in MODELS:
        accuracy.plot(lengths, [results[length][label][1] for length in lengths], marker="o", label=label)
    accuracy.axhline(baseline, color="grey", linestyle="--", label="always predict 1")
    accuracy.set(
        title=f"after {steps} steps of Adam",
        xlabel="sequence length T",
        ylabel=f"test sequences within {TOLERANCE}",
        xticks=lengths,
        ylim=(0, 1.02),
    )
    accuracy.grid(True, alpha=0.3)
    accuracy.legend(fontsize="small")
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--steps", type=int, default=300, help="training steps per model and length")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--test_size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/vanishing_gradients.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tqdm import tqdm

    norms, results, baselines = {}, {}, []
    progress = tqdm(total=len(args.lengths) * len(MODELS), desc="models", disable=None)  # stderr, TTY only
    for length in args.lengths:
        test_x, test_y = adding_problem(args.test_size, length, torch.Generator().manual_seed(args.seed + 1))
        probe_x, probe_y = adding_problem(args.batch_size, length, torch.Generator().manual_seed(args.seed + 2))
        baselines.append(((test_y - 1.0).abs() < TOLERANCE).float().mean().item())
        norms[length], results[length] = {}, {}
        for label, options in MODELS.items():
            torch.manual_seed(args.seed)
            model = AddingModel(args.hidden_size, **options)
            norms[length][label] = gradient_norms(model, probe_x, probe_y)
            train(model, length, args, torch.Generator().manual_seed(args.seed + 3))
            results[length][label] = evaluate(model, test_x, test_y)
            progress.update()
    progress.close()
    baseline = sum(baselines) / len(baselines)

    print("Gradient at the first step relative to the last, ||dL/dh_1|| / ||dL/dh_T||, at initialisation:\n")
    print(markdown_table(args.lengths, lambda n, label: f"{(norms[n][label][-1] / norms[n][label][0]).item():.1e}"))
    print(
        f"\nAfter {args.steps} steps (Adam lr {args.lr}, batch {args.batch_size}, hidden {args.hidden_size}): "
        f"test MSE / solved (within {TOLERANCE}); always predicting 1 gives 0.167 / {baseline:.0%}\n"
    )
    print(markdown_table(args.lengths, lambda n, label: trained_cell(*results[n][label])))
    plot(args.out, norms, results, baseline, args.steps)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
