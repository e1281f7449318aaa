"""The ``rnnzoo`` command: LightningCLI (fit/validate/test/predict) plus ``generate`` and ``translate``."""

import argparse
import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from datamodules.loading import DataError


class RnnzooCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        # Sizes the data decides. A link whose source or target a chosen class lacks is skipped, so
        # one parser serves every task (the language model has no labels).
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.labels", "model.init_args.labels", apply_on="instantiate")
        parser.link_arguments("data.char_vocab_size", "model.init_args.char_vocab_size", apply_on="instantiate")
        parser.link_arguments("data.source_vocab_size", "model.init_args.source_vocab_size", apply_on="instantiate")
        parser.link_arguments("data.target_vocab_size", "model.init_args.target_vocab_size", apply_on="instantiate")
        parser.link_arguments("data.language_pair", "model.init_args.language_pair", apply_on="instantiate")

    def _resolve_best(self) -> None:
        """Make ``--ckpt_path best`` work in a fresh process: read the best path from ``last.ckpt``."""
        config = self.config_init[self.subcommand]
        callback = self.trainer.checkpoint_callback
        if config.get("ckpt_path") != "best" or callback is None or callback.best_model_path:
            return
        if callback.dirpath is None:
            raise SystemExit(
                "--ckpt_path best in a new process needs ModelCheckpoint(dirpath=...) in the config "
                "(the zoo configs set one); otherwise pass the checkpoint's path"
            )
        last = Path(callback.dirpath) / "last.ckpt"
        if not last.is_file():
            raise SystemExit(f"--ckpt_path best: no {last} to read the best checkpoint from; train first")
        # Our own checkpoint (not a download), so unpickling it is fine.
        states = torch.load(last, map_location="cpu", weights_only=False).get("callbacks", {})
        best = next((s["best_model_path"] for k, s in states.items() if k.startswith("ModelCheckpoint")), "")
        if not best or not Path(best).is_file():
            raise SystemExit(f"--ckpt_path best: {last} names no existing best checkpoint ({best!r})")
        print(f"best checkpoint: {best}")
        config["ckpt_path"] = best

    before_validate = before_test = before_predict = _resolve_best

    def after_predict(self) -> None:
        """Print predictions as JSON lines (tasks whose ``predict_step`` returns lists of dicts)."""
        for batch in self.trainer.predict_loop.predictions or []:
            for row in batch if isinstance(batch, list) else []:
                print(json.dumps(row))


def generate_main(argv: list[str]) -> None:
    from lightning_modules.language_model import LanguageModelTask

    parser = argparse.ArgumentParser(
        prog="rnnzoo generate", description="Sample text from a language-model checkpoint."
    )
    parser.add_argument("--ckpt", required=True, help="a .ckpt written by `rnnzoo fit`")
    parser.add_argument("--prompt", default="", help="text to continue (a new sentence when empty)")
    parser.add_argument("--max_tokens", type=int, default=50, help="stop after this many new tokens")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if not Path(args.ckpt).is_file():
        parser.error(f"no checkpoint at {args.ckpt}")
    task = LanguageModelTask.load_from_checkpoint(args.ckpt, map_location="cpu")
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        try:
            print(task.generate_text(args.prompt, args.max_tokens, args.temperature, args.top_k, seed))
        except ValueError as err:
            parser.error(str(err))


def translate_main(argv: list[str]) -> None:
    from lightning_modules.translation import TranslationTask

    parser = argparse.ArgumentParser(prog="rnnzoo translate", description="Translate sentences with a checkpoint.")
    parser.add_argument("--ckpt", required=True, help="a .ckpt written by `rnnzoo fit` with a translation config")
    parser.add_argument("--text", action="append", required=True, help="a source sentence (repeat for several)")
    parser.add_argument("--beam_size", type=int, default=None, help="1 = greedy (default: the model's, 5)")
    parser.add_argument("--attention_png", default=None, help="save the first sentence's attention heatmap here")
    args = parser.parse_args(argv)
    if not Path(args.ckpt).is_file():
        parser.error(f"no checkpoint at {args.ckpt}")
    if args.beam_size is not None and args.beam_size < 1:
        parser.error(f"--beam_size must be >= 1, got {args.beam_size}")
    task = TranslationTask.load_from_checkpoint(args.ckpt, map_location="cpu")
    try:
        for source, translation in zip(args.text, task.translate(args.text, args.beam_size), strict=True):
            print(json.dumps({"source": source, "translation": translation}, ensure_ascii=False))
        if args.attention_png:
            task.plot_attention(args.text[0], args.attention_png)
            print(f"attention heatmap: {args.attention_png}", file=sys.stderr)
    except ValueError as err:
        parser.error(str(err))


def zoo_main(argv: list[str]) -> None:
    from lightning_modules.pretrained import publish

    parser = argparse.ArgumentParser(prog="rnnzoo zoo", description="Pretrained zoo folders.")
    commands = parser.add_subparsers(dest="command", required=True)
    publish_parser = commands.add_parser("publish", help="convert a .ckpt into a pretrained folder")
    publish_parser.add_argument("ckpt", help="a .ckpt written by `rnnzoo fit`")
    publish_parser.add_argument("--out", required=True, help="the folder to write (replaced if it exists)")
    publish_parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="weight storage")
    publish_parser.add_argument("--metric", action="append", default=[], help="NAME=VALUE it reached (repeatable)")
    publish_parser.add_argument("--split", default="test", help="the split the metrics were measured on")
    publish_parser.add_argument("--command", default="", help="the command that trained and evaluated it")
    args = parser.parse_args(argv)
    try:
        values = dict(metric.split("=", 1) for metric in args.metric)
        metrics = {"split": args.split, "metrics": {k: float(v) for k, v in values.items()}, "command": args.command}
    except ValueError:
        parser.error(f"--metric takes NAME=NUMBER, got {args.metric}")
    try:
        folder = publish(args.ckpt, args.out, metrics if args.metric else None, getattr(torch, args.dtype))
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"wrote {folder}")


def export_main(argv: list[str]) -> None:
    from deploy.export import DEFAULT_OPSET, DEFAULT_TOLERANCE, ExportError, export

    parser = argparse.ArgumentParser(
        prog="rnnzoo export", description="Export a checkpoint or pretrained folder to ONNX, verified against PyTorch."
    )
    parser.add_argument("--ckpt", required=True, help="a .ckpt written by `rnnzoo fit`, or a pretrained folder")
    parser.add_argument("--out", required=True, help="the folder to write (replaced only if the export succeeds)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |onnxruntime - torch|")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="onnxruntime dynamic quantization")
    args = parser.parse_args(argv)
    try:
        config = export(args.ckpt, args.out, args.opset, args.tolerance, args.quantize)
    except (FileNotFoundError, ValueError, ExportError) as err:
        parser.error(str(err))
    for graph, check in config["verification"].items():
        print(f"{graph}: max |onnxruntime - torch| = {check['max_abs_diff']:.2e} (tolerance {check['tolerance']:g})")
        if "int8_max_abs_diff" in check:
            print(f"{graph}: after int8 quantization, max |onnxruntime - torch| = {check['int8_max_abs_diff']:.2e}")
    print(f"wrote {args.out}")


SUBCOMMANDS = {"generate": generate_main, "translate": translate_main, "zoo": zoo_main, "export": export_main}


def main(argv: list[str] | None = None) -> None:
    """Entry point; ``argv`` defaults to the command line."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] and args[0] in SUBCOMMANDS:
        return SUBCOMMANDS[args[0]](args[1:])
    if not args or args[0] in ("-h", "--help"):
        print(
            "rnnzoo generate --help: sample text from a language-model checkpoint\n"
            "rnnzoo translate --help: translate sentences with a translation checkpoint\n"
            "rnnzoo zoo --help: pretrained zoo folders (publish a checkpoint)\n"
            "rnnzoo export --help: export a checkpoint to ONNX, verified against PyTorch\n"
            "(LightningCLI subcommands below)\n"
        )
    try:
        RnnzooCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=argv,  # None: LightningCLI reads sys.argv itself
        )
    except DataError as err:
        raise SystemExit(f"rnnzoo: data error: {err}") from None


if __name__ == "__main__":
    main()
