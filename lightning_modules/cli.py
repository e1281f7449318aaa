"""The ``rnnzoo`` command: LightningCLI (fit/validate/test/predict) and our own subcommands.

Each subcommand imports what it needs when it runs, so that ``rnnzoo serve`` never imports torch:
the base install (``pip install rnnzoo``) serves exported models; the others need the ``train`` extra.
"""

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

TRAINING_STACK = ("torch", "lightning", "jsonargparse", "datasets", "safetensors")


def generate_main(argv: list[str]) -> None:
    from lightning_modules.language_model import LanguageModelTask
    from lightning_modules.option_flags import add_option_flags, options_from_flags
    from zoo.common.predict.language_model import GenerationOptions

    parser = argparse.ArgumentParser(
        prog="rnnzoo generate",
        description="Sample text from a language model: one JSON line {prompt, continuation} per sample.",
    )
    parser.add_argument("--ckpt", required=True, help="a .ckpt written by `rnnzoo fit`, a zoo entry or a folder")
    parser.add_argument("--prompt", default="", help="text to continue (a new sentence when empty)")
    add_option_flags(parser, GenerationOptions, old_names={"max_new_tokens": "--max_tokens"})
    parser.add_argument("--num_samples", type=int, default=1, help="samples, with seeds seed, seed + 1, ...")
    args = parser.parse_args(argv)
    task = load_task_or_exit(parser, args.ckpt, LanguageModelTask)
    for i in range(args.num_samples):
        try:
            options = options_from_flags(args, GenerationOptions)
            seed = None if options.seed is None else options.seed + i
            (record,) = task.predict([args.prompt], dataclasses.replace(options, seed=seed))
        except ValueError as err:
            parser.error(str(err))
        print(json.dumps(record, ensure_ascii=False))


def translate_main(argv: list[str]) -> None:
    from lightning_modules.option_flags import add_option_flags, options_from_flags
    from lightning_modules.translation import TranslationTask
    from zoo.common.predict.translation import TranslationOptions

    parser = argparse.ArgumentParser(
        prog="rnnzoo translate", description="Translate sentences: one JSON line {source, translation} each."
    )
    parser.add_argument("--ckpt", required=True, help="a translation .ckpt, zoo entry or pretrained folder")
    parser.add_argument("--text", action="append", required=True, help="a source sentence (repeat for several)")
    add_option_flags(parser, TranslationOptions)
    parser.add_argument("--attention_png", default=None, help="save the first sentence's attention heatmap here")
    args = parser.parse_args(argv)
    try:
        options = options_from_flags(args, TranslationOptions)
    except ValueError as err:
        parser.error(str(err))
    task = load_task_or_exit(parser, args.ckpt, TranslationTask)
    try:
        for record in task.predict(args.text, options):
            print(json.dumps(record, ensure_ascii=False))
        if args.attention_png:
            task.plot_attention(args.text[0], args.attention_png)
            print(f"attention heatmap: {args.attention_png}", file=sys.stderr)
    except ValueError as err:
        parser.error(str(err))


def forecast_main(argv: list[str]) -> None:
    from lightning_modules.forecasting import ForecastingTask, save_forecast_plot, window_forecast

    parser = argparse.ArgumentParser(
        prog="rnnzoo forecast",
        description="Forecast one window of the data a forecaster was trained on: one JSON line {columns, forecast, "
        "truth, mse, mae} (errors on the scaled values), and with --png a plot of history, truth and forecast.",
    )
    parser.add_argument("--ckpt", required=True, help="a forecasting .ckpt, zoo entry or pretrained folder")
    parser.add_argument("--data_dir", required=True, help="the folder holding the series' CSV (ETTh1.csv)")
    parser.add_argument("--split", choices=["train", "validation", "test"], default="test")
    parser.add_argument("--window", type=int, default=0, help="which window of the split (0 is its first)")
    parser.add_argument("--png", default=None, help="draw the window's history, truth and forecast here")
    parser.add_argument("--column", default=None, help="the column to draw (default: OT, or the only one)")
    args = parser.parse_args(argv)
    task = load_task_or_exit(parser, args.ckpt, ForecastingTask)
    try:
        result = window_forecast(task, args.data_dir, args.split, args.window)
        if args.png:
            column = args.column or ("OT" if "OT" in result["columns"] else result["columns"][-1])
            save_forecast_plot(result, column, args.png)
            print(f"forecast plot: {args.png}", file=sys.stderr)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))


def distill_data_main(argv: list[str]) -> None:
    from lightning_modules.distillation_data import sequence_level_data
    from zoo.storage.hub import ZooError

    parser = argparse.ArgumentParser(
        prog="rnnzoo distill-data",
        description="Sequence-level distillation: a copy of a translation data folder whose training targets "
        "are a teacher's beam translations (validation and test unchanged).",
    )
    parser.add_argument("--teacher", required=True, help="a translation .ckpt, zoo entry or pretrained folder")
    parser.add_argument("--data_dir", required=True, help="a folder of train/validation/test.parquet")
    parser.add_argument("--out", required=True, help="a new or empty folder for the distilled data")
    parser.add_argument("--source_lang", default="de")
    parser.add_argument("--target_lang", default="en")
    parser.add_argument("--translation_column", default=None, help="a dict column {lang: text} (WMT/IWSLT)")
    parser.add_argument("--beam_size", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=64, help="sentences translated together")
    args = parser.parse_args(argv)
    if args.beam_size < 1 or args.batch_size < 1:
        parser.error("--beam_size and --batch_size must be >= 1")
    options = {k: v for k, v in vars(args).items() if k not in ("teacher", "data_dir", "out")}
    try:
        print(f"wrote {sequence_level_data(args.teacher, args.data_dir, args.out, **options)}")
    except (FileNotFoundError, FileExistsError, ValueError, ZooError) as err:
        parser.error(str(err))


def load_task_or_exit(parser: argparse.ArgumentParser, source: str, expected):
    """The task in ``source`` (.ckpt, zoo entry, pretrained folder or URL), or a usage error."""
    from lightning_modules.task_io import load_task
    from zoo.storage.hub import ZooError

    try:
        return load_task(source, expected)
    except (FileNotFoundError, ValueError, ZooError) as err:
        parser.error(str(err))


def zoo_main(argv: list[str]) -> None:
    from lightning_modules.zoo_command import zoo_main as run

    run(argv)


def export_main(argv: list[str]) -> None:
    from deploy.export import DEFAULT_OPSET, DEFAULT_TOLERANCE, ExportError, export
    from lightning_modules.task_io import as_pretrained_folder
    from zoo.storage.hub import ZooError, resolve

    parser = argparse.ArgumentParser(
        prog="rnnzoo export", description="Export a checkpoint or pretrained folder to ONNX, verified against PyTorch."
    )
    parser.add_argument("--ckpt", required=True, help="a .ckpt written by `rnnzoo fit`, or a pretrained folder")
    parser.add_argument(
        "--out", required=True, help="a new or empty folder, or an earlier export to replace once this one succeeds"
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |onnxruntime - torch|")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="onnxruntime dynamic quantization")
    parser.add_argument(
        "--data_dir",
        default=None,
        help="a folder with test.parquet (a forecaster: its series' CSV): parity on its rows",
    )
    parser.add_argument("--parity_examples", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        with as_pretrained_folder(args.ckpt) as (source, checkpoint_sha256):
            source = resolve(source)  # once: a zoo entry, URL or hf:// source is fetched and checked here
            test = parity_rows(source, args.data_dir) if args.data_dir else None
            config = export(
                source, args.out, args.opset, args.tolerance, args.quantize, test, args.parity_examples,
                source_sha256=checkpoint_sha256,
            )  # fmt: skip
    except (FileNotFoundError, FileExistsError, ValueError, ExportError, ZooError) as err:
        parser.error(str(err))
    for graph, check in config.verification.items():
        print(f"{graph}: max |onnxruntime - torch| = {check['max_abs_diff']:.2e} (tolerance {check['tolerance']:g})")
        if "int8_max_abs_diff" in check:
            print(f"{graph}: after int8 quantization, max |onnxruntime - torch| = {check['int8_max_abs_diff']:.2e}")
    if config.parity is not None:
        print("parity on real test rows:", json.dumps(config.parity))
    print(f"wrote {args.out}")


def parity_rows(folder, data_dir: str):
    """The held-out rows of ``data_dir`` that export's parity check reads for the pretrained ``folder``,
    in the task's schema: the test split's rows (``test.parquet``), or a forecaster's test windows."""
    from datamodules.loading import load_splits
    from zoo.common import tasks
    from zoo.common.formats import read_pretrained_config

    config = read_pretrained_config(folder)
    datamodule = tasks.get(config.task).load("datamodule")
    if hasattr(datamodule, "test_rows"):
        return datamodule.test_rows(data_dir, config.task_arguments)
    return load_splits("", data_dir, ("test",))["test"]


def serve_main(argv: list[str]) -> None:
    from deploy.service import Limits, serve

    parser = argparse.ArgumentParser(prog="rnnzoo serve", description="Serve exported model folders over HTTP.")
    parser.add_argument("folders", nargs="+", help="folders written by `rnnzoo export` (model name = folder name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--threads", type=int, default=None, help="onnxruntime intra-op threads per model (with --ray: 1 per replica)"
    )
    for field, value in vars(Limits()).items():
        parser.add_argument(f"--{field}", type=type(value), default=value)
    parser.add_argument(
        "--allowed_hosts", type=lambda value: [host.strip() for host in value.split(",") if host.strip()],
        default=None, help="comma-separated Host names to answer (default: 127.0.0.1,localhost,::1 when bound "
        "there, else any); other names get a 400, which stops DNS-rebinding pages",
    )  # fmt: skip
    ray = parser.add_argument_group("Ray Serve (pip install 'rnnzoo[ray]')")
    ray.add_argument("--ray", action="store_true", help="run the service as a Ray Serve deployment")
    ray.add_argument("--replicas", type=int, default=1, help="replicas of the service, each with its own sessions")
    ray.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="scale between MIN and MAX replicas")
    ray.add_argument(
        "--ray_address", default=None, help="a Ray cluster to join (auto: this machine's); default: a new one"
    )
    args = parser.parse_args(argv)
    missing = [folder for folder in args.folders if not (Path(folder) / "config.json").is_file()]
    if missing:
        parser.error(f"not exported model folders (no config.json): {', '.join(missing)}")
    ray_options = {name: vars(args).pop(name) for name in ("ray", "replicas", "autoscale", "ray_address")}
    if not ray_options["ray"] and (
        ray_options["replicas"] != 1 or ray_options["autoscale"] or ray_options["ray_address"]
    ):
        parser.error("--replicas, --autoscale and --ray_address need --ray")
    try:
        if ray_options["ray"]:
            serve_on_ray(args, ray_options)
        else:
            serve(**vars(args))
    except ValueError as err:
        parser.error(str(err))


def serve_on_ray(args: argparse.Namespace, options: dict) -> None:
    from deploy import ray_serve
    from deploy.service import Limits

    autoscale = ray_serve.parse_autoscale(options["autoscale"]) if options["autoscale"] else None
    scaling = ray_serve.Scaling(options["replicas"], autoscale, args.threads or 1)
    limits = Limits(**{k: v for k, v in vars(args).items() if k in Limits.__dataclass_fields__})
    print(f"serving {len(args.folders)} model(s) on Ray at http://{args.host}:{args.port}", file=sys.stderr)
    ray_serve.serve_forever(args.folders, args.host, args.port, limits, scaling, options["ray_address"])


def plot_main(argv: list[str]) -> None:
    from lightning_modules.plot import plot_curves

    parser = argparse.ArgumentParser(
        prog="rnnzoo plot", description="Draw a run's loss, metric and learning-rate curves from its CSV log."
    )
    parser.add_argument(
        "run_dir", help="a run folder holding metrics.csv (runs/<name>/version_N), or a folder holding exactly one"
    )
    parser.add_argument("--out", default=None, help="the PNG to write (default: curves.png in the run folder)")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {plot_curves(args.run_dir, args.out)}")
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))


SUBCOMMANDS = {
    "generate": generate_main,
    "translate": translate_main,
    "forecast": forecast_main,
    "distill-data": distill_data_main,
    "zoo": zoo_main,
    "export": export_main,
    "serve": serve_main,
    "plot": plot_main,
}


def require_training_stack(command: str) -> None:
    """Exit with one line naming the extra to install when the training stack is missing."""
    missing = [name for name in TRAINING_STACK if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"rnnzoo {command} needs the training stack ({', '.join(missing)} missing): "
            "pip install 'rnnzoo[train]' (install torch for your machine first)"
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point; ``argv`` defaults to the command line."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] and args[0] in SUBCOMMANDS:
        if args[0] != "serve" and not set(args[1:2]) & {"-h", "--help"}:
            require_training_stack(args[0])
        return SUBCOMMANDS[args[0]](args[1:])
    if not args or args[0] in ("-h", "--help"):
        print(
            "rnnzoo serve --help: serve exported models over HTTP (the base install, no torch needed)\n"
            "With the training stack (pip install 'rnnzoo[train]'):\n"
            "rnnzoo fit|validate|test|predict --help: LightningCLI training and evaluation\n"
            "rnnzoo generate --help: sample text from a language-model checkpoint\n"
            "rnnzoo translate --help: translate sentences with a translation checkpoint\n"
            "rnnzoo forecast --help: forecast a window of a series and plot it\n"
            "rnnzoo distill-data --help: a teacher's translations as training data (sequence-level distillation)\n"
            "rnnzoo zoo --help: pretrained zoo entries (list, info, download, predict, publish)\n"
            "rnnzoo export --help: export a checkpoint to ONNX, verified against PyTorch\n"
            "rnnzoo plot --help: draw a run's training curves (loss, metrics, learning rate) into a PNG\n"
        )
        if importlib.util.find_spec("lightning") is None:
            return
        print("(LightningCLI subcommands below)\n")
    require_training_stack(args[0] if args else "fit")
    from lightning_modules.lightning_cli import run_lightning_cli

    run_lightning_cli(argv)


if __name__ == "__main__":
    main()
