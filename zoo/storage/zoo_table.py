"""The README's table of pretrained zoo entries, rendered from ``zoo/pretrained_models/manifest.json``.

The manifest is the one record of what each entry is and what it reached; the README's table is
generated from it, so the two cannot drift apart. ``python -m zoo.storage.zoo_table`` rewrites the block
between the markers in ``README.md``; ``tests/test_readme.py`` fails when the block is stale.

Torch-free: it reads the manifest with ``zoo.common.formats``.
"""

import os
import tempfile
from pathlib import Path

from zoo.common import tasks
from zoo.common.formats import EntryInfo, Manifest, parse, read_json

MANIFEST = Path(__file__).parents[1] / "pretrained_models" / "manifest.json"
README = Path(__file__).parents[2] / "README.md"
START = "<!-- zoo-table:start -->"
END = "<!-- zoo-table:end -->"

TASK_ORDER = tuple(tasks.TASKS)

# Metric key -> (label, format); the first metric an entry has in this order is its headline, the
# others follow in parentheses. Fractions (accuracy, F1, precision, recall) are shown as percentages.
METRICS = {
    "test_bpc": ("{} bits per character", lambda v: f"{v:g}"),
    "test_ppl": ("perplexity {}", lambda v: f"{v:g}"),
    "test_acc": ("accuracy {}", lambda v: f"{100 * v:.2f}%"),
    "test_macro_f1": ("macro F1 {}", lambda v: f"{100 * v:.2f}"),
    "test_f1": ("entity F1 {}", lambda v: f"{100 * v:.2f}"),
    "test_precision": ("P {}", lambda v: f"{100 * v:.2f}"),
    "test_recall": ("R {}", lambda v: f"{100 * v:.2f}"),
    "test_bleu": ("BLEU {}", lambda v: f"{v:.2f}"),
    "test_chrf": ("chrF {}", lambda v: f"{v:.2f}"),
    "test_mse": ("MSE {}", lambda v: f"{v:.3f}"),
    "test_mae": ("MAE {}", lambda v: f"{v:.3f}"),
}

COLUMNS = ("entry", "task", "architecture", "params", "test metric", "anchor", "size", "usage")
RIGHT_ALIGNED = ("params", "size")


def task_name(entry: EntryInfo) -> str:
    """The task's name; entries written before tasks had names store its LightningModule's class name."""
    return tasks.get(entry.task).name if entry.task else ""


def metric_text(metrics: dict) -> str:
    """``{"test_acc": 0.8916, "test_macro_f1": 0.8915}`` -> ``accuracy 89.16% (macro F1 89.15)``."""
    known = [key for key in METRICS if key in metrics]
    others = sorted(key for key in metrics if key not in METRICS)
    parts = [METRICS[key][0].format(METRICS[key][1](metrics[key])) for key in known]
    parts += [f"{key} {metrics[key]:g}" for key in others]
    if not parts:
        return "-"
    return parts[0] + (f" ({', '.join(parts[1:])})" if parts[1:] else "")


def cell(text: str) -> str:
    """A table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def row(entry: EntryInfo) -> list[str]:
    name, task = entry.name, task_name(entry)
    # descriptions read "<data and task>: <architecture>"
    what, _, architecture = entry.description.partition(": ")
    if not architecture:
        what, architecture = task, what
    params = f"{entry.parameters / 1e6:.1f} M" if entry.parameters is not None else ""
    usage = f'`task_from_pretrained("{name}"){tasks.TASKS[task].usage}`' if task in tasks.TASKS else ""
    cells = [f"`{name}`", what, architecture, params, metric_text(entry.metrics)]
    cells += [entry.anchor, f"{entry.size() / 1e6:.1f} MB", usage]
    return [cell(c) for c in cells]


def zoo_table(manifest: Manifest) -> str:
    """The Markdown table of the manifest's entries, one row each, grouped by task."""

    def order(entry: EntryInfo) -> tuple:
        task = task_name(entry)
        rank = TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)
        return rank, entry.name

    entries = sorted(manifest.entries.values(), key=order)
    lines = ["| " + " | ".join(COLUMNS) + " |"]
    lines.append("| " + " | ".join("---:" if c in RIGHT_ALIGNED else "---" for c in COLUMNS) + " |")
    lines += ["| " + " | ".join(row(entry)) + " |" for entry in entries]
    return "\n".join(lines) + "\n"


def read_manifest(path: Path = MANIFEST) -> Manifest:
    return parse(Manifest, read_json(path), str(path))


def replace_block(text: str, table: str) -> str:
    """``text`` with the block between the markers replaced by ``table``."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {START} ... {END} block to hold the zoo table")
    return text[: start + len(START)] + "\n" + table + text[end:]


def main() -> None:
    if not README.is_file():
        raise SystemExit(f"{README} not found: run `python -m zoo.storage.zoo_table` in a source checkout of rnnzoo")
    manifest = read_manifest()
    text = README.read_text(encoding="utf-8")
    try:
        new = replace_block(text, zoo_table(manifest))
    except ValueError as err:
        raise SystemExit(f"{README}: {err}") from None
    if new == text:
        print(f"{README.name}: the zoo table is up to date")
        return
    # a temporary file in the same folder, renamed over the README: never a half-written README
    fd, tmp = tempfile.mkstemp(dir=README.parent, prefix=".README.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(new)
        os.chmod(tmp, README.stat().st_mode & 0o777)
        os.replace(tmp, README)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"{README.name}: rewrote the zoo table ({len(manifest.entries)} entries)")


if __name__ == "__main__":
    main()
