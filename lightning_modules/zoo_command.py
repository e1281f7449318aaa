"""``rnnzoo zoo list | info NAME | download NAME | predict NAME --text T | publish X.ckpt | ensemble A B... |
average X.ckpt Y.ckpt...``."""

import argparse
import json
from pathlib import Path

from lightning_modules.option_flags import add_option_flags, given_options
from zoo.common import tasks
from zoo.common.formats import EntryInfo, Manifest, parse, read_json, write_json
from zoo.storage.hub import PACKAGE_DIR, ZooError, entry_info, load_manifest, resolve, write_entry

TASK_OPTIONS = tuple(task.load("options") for task in tasks.TASKS.values())  # ``zoo.common.predict``'s
DTYPE = {
    "choices": ["float32", "float16", "int8"],
    "default": "float32",
    "help": "weight storage (int8: per-row int8 matrices of 2**20 values or more, float16 elsewhere)",
}


def zoo_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="rnnzoo zoo", description="Pretrained zoo entries.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the zoo entries: name, task, test metric, size")
    info = commands.add_parser("info", help="one entry's manifest record")
    info.add_argument("name")
    download = commands.add_parser("download", help="fetch and verify an entry (name, URL or hf://org/repo)")
    download.add_argument("name")
    predict = commands.add_parser("predict", help="run an entry on raw texts or windows (JSON lines)")
    predict.add_argument("name", help="a zoo entry, pretrained folder, URL or hf://org/repo")
    items = predict.add_mutually_exclusive_group(required=True)
    items.add_argument("--text", action="append", help="a text, sentence or prompt (repeatable)")
    items.add_argument(
        "--series", type=json_windows, help="a forecaster's windows as JSON: [[[row 1], [row 2], ...], ...]"
    )
    add_option_flags(predict, *TASK_OPTIONS)  # an entry takes those of its task
    publish = commands.add_parser("publish", help="convert a .ckpt into a pretrained folder with its entry.json")
    publish.add_argument("ckpt", help="a .ckpt written by `rnnzoo fit`, or a pretrained folder or entry to store again")
    publish.add_argument(
        "--out", required=True, help="a new or empty folder, or an earlier pretrained folder to replace"
    )
    publish.add_argument("--name", default=None, help="the entry's name (default: the folder's name)")
    publish.add_argument("--description", default="")
    publish.add_argument("--dtype", **DTYPE)
    publish.add_argument("--metric", action="append", default=[], help="NAME=VALUE it reached (repeatable)")
    publish.add_argument("--split", default="test", help="the split the metrics were measured on")
    publish.add_argument("--command", default="", help="the command that trained and evaluated it")
    publish.add_argument("--anchor", default="", help="the published figure it is compared with")
    publish.add_argument("--url", action="append", default=[], help="where the folder is mirrored (repeatable)")
    publish.add_argument("--manifest", default=None, help="add (or replace) the entry in this manifest.json")
    ensemble = commands.add_parser(
        "ensemble", help="a pretrained folder that averages the predictions of models of one task and vocabulary"
    )
    ensemble.add_argument("members", nargs="+", help=".ckpt files, pretrained folders or zoo entries")
    ensemble.add_argument("--out", required=True, help="a new or empty folder, or an earlier one to replace")
    ensemble.add_argument("--dtype", **DTYPE)
    average = commands.add_parser(
        "average", help="a pretrained folder whose weights average checkpoints of one run (e.g. its last epochs)"
    )
    average.add_argument("checkpoints", nargs="+", help=".ckpt files (or pretrained folders) of one architecture")
    average.add_argument("--out", required=True, help="a new or empty folder, or an earlier one to replace")
    average.add_argument("--dtype", **DTYPE)
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print_table(load_manifest())
        elif args.command == "info":
            print(json.dumps(entry_info(args.name).to_json(), indent=2))
        elif args.command == "download":
            print(resolve(args.name))
        elif args.command == "predict":
            items = args.text if args.series is None else args.series
            for row in predict_texts(args.name, items, **given_options(args, *TASK_OPTIONS)):
                print(json.dumps(row, ensure_ascii=False))
        elif args.command == "ensemble":
            import torch

            from lightning_modules.task_io import write_ensemble

            folder = write_ensemble(args.members, args.out, getattr(torch, args.dtype))
            print(f"wrote {folder} ({len(args.members)} members)")
        elif args.command == "average":
            import torch

            from lightning_modules.task_io import average_checkpoints

            folder = average_checkpoints(args.checkpoints, args.out, getattr(torch, args.dtype))
            print(f"wrote {folder} (the mean of {len(args.checkpoints)})")
        else:
            publish_checkpoint(args, parser)
    except (ZooError, FileNotFoundError, FileExistsError, ValueError) as err:
        parser.error(str(err))


def json_windows(value: str) -> list:
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None


def predict_texts(source: str, items: list, **options) -> list[dict]:
    """The records of the entry's task for raw texts (or a forecaster's windows; ``zoo.common.predict``), with
    the task's ``options``."""
    from lightning_modules.task_io import task_from_pretrained
    from zoo.common.predict import options_for

    task = task_from_pretrained(source)
    return task.predict(items, options_for(task.task, **options))


def print_table(entries: dict[str, EntryInfo]) -> None:
    rows = []
    for name, entry in sorted(entries.items()):
        shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.metrics.items()) or "-"
        task = tasks.get(entry.task).name if entry.task else ""  # old entries name the task's class
        rows.append((name, task, shown, f"{entry.size() / 1e6:.1f} MB", entry.description))
    header = ("name", "task", "test metric", "size", "description")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for name, task, metric, size, description in [header, *rows]:
        print(name.ljust(widths[0]), task.ljust(widths[1]), metric.ljust(widths[2]), size.rjust(widths[3]), description)


def publish_checkpoint(args, parser: argparse.ArgumentParser) -> None:
    import torch

    from lightning_modules.task_io import publish
    from zoo.common.formats import read_pretrained_config
    from zoo.storage.pretrained import load_pretrained

    try:
        values = dict(metric.split("=", 1) for metric in args.metric)
        metrics = {"split": args.split, "metrics": {k: float(v) for k, v in values.items()}, "command": args.command}
    except ValueError:
        parser.error(f"--metric takes NAME=NUMBER, got {args.metric}")
    folder = publish(args.ckpt, args.out, metrics if args.metric else None, getattr(torch, args.dtype))
    config = read_pretrained_config(folder)
    name = args.name or folder.name
    parameters = sum(p.numel() for p in load_pretrained(folder).network.parameters())  # not buffers or int8 scales
    fields = {"task": config.task, "architecture": config.architecture, "parameters": parameters}
    fields |= {"description": args.description, "metrics": metrics["metrics"], "anchor": args.anchor}
    fields |= {"command": args.command, "urls": args.url}
    entry = write_entry(folder, name, **fields)
    if args.manifest:
        add_to_manifest(Path(args.manifest), folder, entry)
    print(f"wrote {folder}")


def add_to_manifest(manifest: Path, folder: Path, entry: EntryInfo) -> None:
    """Record ``entry`` in ``manifest``; a folder inside the zoo package is found there offline."""
    entries = parse(Manifest, read_json(manifest), str(manifest)).entries if manifest.is_file() else {}
    local = folder.resolve()
    if local.is_relative_to(PACKAGE_DIR.resolve()):
        entry = entry.model_copy(update={"local": str(local.relative_to(PACKAGE_DIR.resolve()))})
    entries[entry.name] = entry
    write_json(manifest, Manifest(entries=entries))
