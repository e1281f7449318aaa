"""``rnnzoo zoo list | info NAME | download NAME | publish X.ckpt``."""

import argparse
import json

from zoo.hub import ZooError, entry_info, load_manifest, resolve, write_entry


def zoo_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="rnnzoo zoo", description="Pretrained zoo entries.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the zoo entries: name, task, test metric, size")
    info = commands.add_parser("info", help="one entry's manifest record")
    info.add_argument("name")
    download = commands.add_parser("download", help="fetch and verify an entry (name, URL or hf://org/repo)")
    download.add_argument("name")
    publish = commands.add_parser("publish", help="convert a .ckpt into a pretrained folder with its entry.json")
    publish.add_argument("ckpt", help="a .ckpt written by `rnnzoo fit`")
    publish.add_argument("--out", required=True, help="the folder to write (replaced if it exists)")
    publish.add_argument("--name", default=None, help="the entry's name (default: the folder's name)")
    publish.add_argument("--description", default="")
    publish.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="weight storage")
    publish.add_argument("--metric", action="append", default=[], help="NAME=VALUE it reached (repeatable)")
    publish.add_argument("--split", default="test", help="the split the metrics were measured on")
    publish.add_argument("--command", default="", help="the command that trained and evaluated it")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print_table(load_manifest())
        elif args.command == "info":
            print(json.dumps(entry_info(args.name), indent=2))
        elif args.command == "download":
            print(resolve(args.name))
        else:
            publish_checkpoint(args, parser)
    except (ZooError, FileNotFoundError, ValueError) as err:
        parser.error(str(err))


def print_table(entries: dict[str, dict]) -> None:
    print(f"{'name':<22} {'task':<16} {'test metric':<22} {'size':>8}  description")
    for name, entry in sorted(entries.items()):
        metric = entry.get("metric", {})
        shown = f"{metric.get('name', '')} {metric.get('value', '')}".strip() or "-"
        size = sum(f["size"] for f in entry.get("files", {}).values()) / 1e6
        print(f"{name:<22} {entry.get('task', ''):<16} {shown:<22} {size:>6.1f} MB  {entry.get('description', '')}")


def publish_checkpoint(args, parser: argparse.ArgumentParser) -> None:
    import torch

    from lightning_modules.pretrained import publish
    from zoo.pretrained import read_config

    try:
        values = dict(metric.split("=", 1) for metric in args.metric)
        metrics = {"split": args.split, "metrics": {k: float(v) for k, v in values.items()}, "command": args.command}
    except ValueError:
        parser.error(f"--metric takes NAME=NUMBER, got {args.metric}")
    folder = publish(args.ckpt, args.out, metrics if args.metric else None, getattr(torch, args.dtype))
    task = read_config(folder)["task"]
    write_entry(folder, args.name or folder.name, task=task, description=args.description)
    print(f"wrote {folder}")
