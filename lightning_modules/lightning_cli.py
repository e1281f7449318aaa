"""``rnnzoo fit/validate/test/predict``: LightningCLI with the data's sizes linked into the model."""

import json
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

from datamodules.loading import DataError
from lightning_modules.distillation import TeacherError
from lightning_modules.task_module import NonFiniteLoss
from lightning_modules.transfer import TransferError
from zoo.common import tasks


class SaveRunConfig(SaveConfigCallback):
    """Saves the merged config as ``config.yaml`` in the run's folder (``runs/<name>/version_N``, which
    rnnzoo made, so replacing it there is safe). A run without a logger has no folder of its own, only
    the working directory, where a ``config.yaml`` may be the user's: nothing is saved then."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.loggers:
            super().setup(trainer, pl_module, stage)


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
        parser.link_arguments("data.level", "model.init_args.level", apply_on="instantiate")
        for name in ("columns", "input_length", "horizon", "mean", "std", "series"):  # forecasting
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        """A value the model's or data's constructor refuses is one line, not jsonargparse's traceback
        that wraps it ("Does not validate against any of the Union subtypes ...")."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            cause = err
            while cause.__cause__ is not None and not isinstance(cause, DataError):
                cause = cause.__cause__
            if isinstance(cause, DataError):  # its own message says what to do (run_lightning_cli prints it)
                raise cause from None
            raise SystemExit(f"rnnzoo {self.subcommand}: invalid configuration: {cause}") from None

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Resolve every logger's version before any makes its folder: CSV and TensorBoard then pick one version_N.
        for logger in trainer.loggers:
            _ = logger.version
        return trainer

    def before_instantiate_classes(self) -> None:
        """Check ``--ckpt_path`` and pick the tokenizers the data uses."""
        config = self.config[self.subcommand]
        path = config.get("ckpt_path")
        self._pretrained_folder = None
        if config.get("weights_only") is False:
            raise SystemExit(f"rnnzoo {self.subcommand}: checkpoints are only loaded with --weights_only true")
        config["weights_only"] = True  # tensors and plain data only: a crafted .ckpt cannot run code
        if path and "://" in path and path.endswith(".ckpt"):
            raise SystemExit(
                f"rnnzoo {self.subcommand}: --ckpt_path {path}: remote .ckpt files are not loaded (unpickling a "
                "stranger's file can run code); pass a pretrained folder's URL or a zoo entry instead"
            )
        if path and not is_lightning_checkpoint(path):
            self._use_pretrained_tokenizers(config, path)
        self._use_encoder_tokenizer(config)

    def _use_pretrained_tokenizers(self, config, path: str) -> None:
        """A ``--ckpt_path`` naming a pretrained folder, zoo entry or URL (not a ``.ckpt``): the data uses
        its tokenizers, so the vocabulary matches the weights loaded before the run."""
        from zoo.common.formats import read_pretrained_config
        from zoo.storage.hub import ZooError, resolve

        try:
            self._pretrained_folder = resolve(path)
            pretrained_task = read_pretrained_config(self._pretrained_folder).task
        except (ZooError, OSError, ValueError) as err:
            raise SystemExit(f"rnnzoo {self.subcommand}: --ckpt_path {path}: {err}") from None
        task = tasks.get(str(config["model"]["class_path"]).rpartition(".")[2]).name
        if pretrained_task != task:
            raise SystemExit(
                f"rnnzoo {self.subcommand}: --ckpt_path {path} holds a {pretrained_task} model, "
                f"the config trains a {task} one"
            )
        data_arguments = config["data"]["init_args"]
        if "tokenizer_from" in data_arguments and data_arguments["tokenizer_from"] is None:
            data_arguments["tokenizer_from"] = str(self._pretrained_folder)

    @staticmethod
    def _use_encoder_tokenizer(config) -> None:
        """A model that starts from a language model's encoder (``encoder_from``) reads the data with that
        model's tokenizer, unless a pretrained ``--ckpt_path`` already gave its own."""
        encoder = config["model"].get("init_args", {}).get("encoder_from")
        data_arguments = config["data"].get("init_args", {})
        if encoder and "tokenizer_from" in data_arguments and data_arguments["tokenizer_from"] is None:
            data_arguments["tokenizer_from"] = encoder

    @staticmethod
    def configure_optimizers(lightning_module, optimizer, lr_scheduler=None):
        """As LightningCLI's, except that a schedule of steps (``OneCycleLR``, ``CyclicLR``) is stepped
        after every optimizer step instead of every epoch."""
        if isinstance(lr_scheduler, OneCycleLR | CyclicLR):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}
        return LightningCLI.configure_optimizers(lightning_module, optimizer, lr_scheduler)

    def _load_pretrained_weights(self) -> bool:
        """Copy the pretrained folder's weights into the model and run without a ``.ckpt``: a folder
        holds weights only, so fitting starts a fresh optimizer, schedule and epoch count."""
        if self._pretrained_folder is None:
            return False
        from lightning_modules.task_io import load_pretrained_weights
        from zoo.networks.ensemble import Ensemble

        try:
            load_pretrained_weights(self.model, self._pretrained_folder)
        except ValueError as err:
            raise SystemExit(f"rnnzoo {self.subcommand}: {err}") from None
        if self.subcommand == "fit" and isinstance(self.model.net, Ensemble):
            raise SystemExit(
                f"rnnzoo fit: {self._pretrained_folder} is an ensemble, which is evaluated, not trained: "
                "fine-tune its members"
            )
        if self.subcommand == "fit" and getattr(self.model, "transfer", None) is not None:
            raise SystemExit(
                f"rnnzoo {self.subcommand}: --ckpt_path {self._pretrained_folder} and encoder_from/"
                "pretrained_embeddings both give the first weights: use one"
            )
        self.config_init[self.subcommand]["ckpt_path"] = None
        return True

    def before_fit(self) -> None:
        if self._load_pretrained_weights():
            print(f"fine-tuning from {self._pretrained_folder}: optimizer and schedule start fresh")
        self._check_last_checkpoint()

    def _resolve_ckpt_path(self) -> None:
        """``--ckpt_path`` may be ``best`` (read from ``last.ckpt``) or a pretrained source."""
        if not self._load_pretrained_weights():
            self._resolve_best()
            self._check_last_checkpoint()

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads a ``--ckpt_path`` file's hyperparameters first: check the file before it
        does, so a damaged or crafted ``.ckpt`` stops the run with one line instead of a traceback."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and Path(path).is_file():
            check_checkpoint_file(subcommand, path)
        elif path and path.endswith(".ckpt") and "://" not in path:
            raise SystemExit(f"rnnzoo {subcommand}: --ckpt_path {path}: no such file{nearby_checkpoints(path)}")
        super()._parse_ckpt_path()

    def _check_last_checkpoint(self) -> None:
        """``--ckpt_path last`` names the newest ``last*.ckpt`` of any checkpoint callback: check each
        the same way (a config may add callbacks with folders of their own)."""
        if self.config_init[self.subcommand].get("ckpt_path") != "last":
            return
        for callback in self.trainer.checkpoint_callbacks:
            if getattr(callback, "dirpath", None):
                for last in sorted(Path(callback.dirpath).glob("last*.ckpt")):
                    check_checkpoint_file(self.subcommand, str(last))

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
        from lightning_modules.task_io import read_checkpoint

        try:
            states = read_checkpoint(last).get("callbacks", {})
        except ValueError as err:
            raise SystemExit(f"--ckpt_path best: {err}") from None
        best = next((s["best_model_path"] for k, s in states.items() if k.startswith("ModelCheckpoint")), "")
        if not best or not Path(best).is_file():
            raise SystemExit(f"--ckpt_path best: {last} names no existing best checkpoint ({best!r})")
        print(f"best checkpoint: {best}")
        config["ckpt_path"] = best

    before_validate = before_test = before_predict = _resolve_ckpt_path

    def after_predict(self) -> None:
        """Print predictions as JSON lines (tasks whose ``predict_step`` returns lists of dicts)."""
        for batch in self.trainer.predict_loop.predictions or []:
            for row in batch if isinstance(batch, list) else []:
                print(json.dumps(row))


def check_checkpoint_file(subcommand: str, path: str) -> None:
    from lightning_modules.task_io import read_checkpoint

    try:
        read_checkpoint(path)
    except ValueError as err:
        raise SystemExit(f"rnnzoo {subcommand}: --ckpt_path {err}") from None


def nearby_checkpoints(path: str) -> str:
    """The checkpoints beside a missing one whose names share its first part: names carry a rounded
    metric (``epoch=18-val_f1=0.8980.ckpt``) that is easy to mistype."""
    missing = Path(path)
    if not missing.parent.is_dir():
        return ""
    prefix = missing.name.partition("-")[0]
    names = sorted(p.name for p in missing.parent.glob("*.ckpt") if p.name.startswith(prefix))
    return f" (in {missing.parent}: {', '.join(names[:5])})" if names else ""


def is_lightning_checkpoint(path: str) -> bool:
    """A ``.ckpt`` file or the ``best``/``last``/``hpc`` names Lightning resolves, as opposed to a
    pretrained folder, zoo entry name or URL."""
    return path in ("best", "last", "hpc", "registry") or path.endswith(".ckpt") or Path(path).is_file()


def run_lightning_cli(argv: list[str] | None = None) -> None:
    """``argv`` None: LightningCLI reads ``sys.argv`` itself."""
    try:
        RnnzooCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"overwrite": True},
            args=argv,
        )
    except DataError as err:
        raise SystemExit(f"rnnzoo: data error: {err}") from None
    except (NonFiniteLoss, TeacherError, TransferError) as err:
        raise SystemExit(f"rnnzoo: {err}") from None
