"""``rnnzoo plot``: training curves from a run's CSV log (the ``metrics.csv`` Lightning's CSVLogger writes).

Lightning writes one row per logging call: training, validation and learning-rate values land on
separate rows, each leaving the other columns empty.
"""

import csv
import os
from pathlib import Path

SPLITS = ("train_", "val_", "test_")


def find_metrics(run_dir: str | Path) -> Path:
    """``run_dir/metrics.csv``, or the one ``metrics.csv`` below ``run_dir`` (e.g. ``runs/ptb_lstm_small``
    holding a single ``version_0``); several runs below it is an error naming them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a folder (pass a run folder such as runs/<name>/version_0)")
    if (run_dir / "metrics.csv").is_file():
        return run_dir / "metrics.csv"
    found = sorted(run_dir.rglob("metrics.csv"))
    if not found:
        raise FileNotFoundError(f"no metrics.csv in {run_dir}: train with a config that logs with CSVLogger")
    if len(found) > 1:
        runs = ", ".join(str(path.parent) for path in found[:5]) + (", ..." if len(found) > 5 else "")
        raise ValueError(f"{run_dir} holds {len(found)} runs, pass one of them: {runs}")
    return found[0]


def read_metrics(path: Path) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    """The x column (``step``, or ``epoch`` in a log without steps) and each logged column's (x, value) points."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path} is not a readable CSV log: {err}") from None
    if not rows:
        raise ValueError(f"{path} holds no logged values (empty, or a header only)")
    x_column = "step" if "step" in rows[0] else "epoch"
    if x_column not in rows[0]:
        raise ValueError(f"{path} has neither a step nor an epoch column: not a Lightning CSV log")
    series = {column: [] for column in rows[0] if column not in ("step", "epoch")}  # in the header's order
    for line, row in enumerate(rows, start=2):
        try:
            for column, value in row.items():
                if column in series and value and row[x_column]:
                    series[column].append((float(row[x_column]), float(value)))
        except (TypeError, ValueError):  # a value that is not a number
            raise ValueError(f"{path}: line {line} is not numbers: not a Lightning CSV log") from None
    series = {column: points for column, points in series.items() if points}
    if not series:
        raise ValueError(f"{path} holds no logged values")
    return x_column, series


def panels(columns: list[str]) -> dict[str, list[str]]:
    """Panel title -> the columns drawn in it: the losses first, then each metric's train/val/test series
    together (``train_ppl`` with ``val_ppl``), the learning rates (``lr-*`` from LearningRateMonitor) last."""
    grouped = {"loss": []}
    for column in columns:
        title = "learning rate" if column.startswith("lr-") else column.removesuffix("_step").removesuffix("_epoch")
        title = next((title.removeprefix(split) for split in SPLITS if title.startswith(split)), title)
        grouped.setdefault(title, []).append(column)
    grouped["learning rate"] = grouped.pop("learning rate", [])
    return {title: members for title, members in grouped.items() if members}


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves into a PNG (default: ``curves.png`` beside ``metrics.csv``); returns its path."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend or global figures; the PNG is drawn by Agg

    metrics = find_metrics(run_dir)
    x_column, series = read_metrics(metrics)
    out = Path(out) if out else metrics.parent / "curves.png"
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name a .png file")

    groups = panels(list(series))
    fig = Figure(figsize=(9, 2.6 * len(groups) + 0.6), layout="constrained")
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, columns) in zip(axes, groups.items(), strict=True):
        for column in columns:
            xs, ys = zip(*series[column], strict=True)
            marker = "o" if len(xs) < 100 else None  # sparse series (validation, short runs): show the points
            drawstyle = "steps-post" if column.startswith("lr-") else "default"  # a rate holds until changed
            ax.plot(xs, ys, label=column, marker=marker, markersize=3, drawstyle=drawstyle)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel(x_column)
    fig.suptitle(str(metrics.parent))

    # Write beside the target and rename: an interrupted or failed save never leaves a partial PNG.
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(temporary, format="png", dpi=100)
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return out
