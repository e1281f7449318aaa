"""Every task rnnzoo knows, described once.

A task's record names each part that serves it, from the network to the HTTP schema, by import
path, so that reading the record imports nothing: the torch-free runtime and service read the same
records as training (Hugging Face ``transformers`` keeps its auto-class mappings as names for the
same reason). The task's ``name`` is what every checkpoint, pretrained folder and export stores.

Adding a task: write its parts (its predict function and options, a zoo architecture, a
LightningModule, a datamodule, the export graphs, a runtime predictor, the service API and a parity
check) and add one ``Task`` to ``TASKS``.
"""

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str  # stored in checkpoints (``"task"``), pretrained folders and exports (``config.json``)
    predict: str  # ``zoo.common.predict``: items and options in, result records out, at every entry point
    options: str  # ``zoo.common.predict``: the options ``predict`` takes, with their defaults
    architecture: str  # the zoo network (``torch.nn.Module``)
    ensemble: str  # ``zoo.networks.ensemble``: several trained networks that predict as one
    lightning_module: str  # trains, evaluates and predicts with the network
    datamodule: str  # the default data
    graphs: str  # ``deploy.graphs``: the network -> the ONNX graphs to write
    predictor: str  # ``deploy.tasks.<task>``: runs an export with onnxruntime
    api: str  # ``deploy.tasks.<task>``: the HTTP request schema and call (``deploy.serving.TaskAPI``)
    tensors: str  # ``deploy.tasks.<task>``: its items and records as Open Inference Protocol tensors
    parity: str  # ``deploy.parity``: the export against the network on held-out rows
    usage: str  # how a trained model of the task is called, shown in the README's zoo table
    tokenizers: tuple[str, ...] = ("tokenizer",)  # names of the tokenizers it carries

    def load(self, part: str):
        """The object a part names, imported now (e.g. ``task.load("predictor")``)."""
        module, _, attribute = getattr(self, part).rpartition(".")
        return getattr(importlib.import_module(module), attribute)

    @property
    def lightning_module_name(self) -> str:
        return self.lightning_module.rpartition(".")[2]


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "language_model",
            predict="zoo.common.predict.language_model.generate",
            options="zoo.common.predict.language_model.GenerationOptions",
            architecture="zoo.networks.language_model.RNNLanguageModel",
            ensemble="zoo.networks.ensemble.LanguageModelEnsemble",
            lightning_module="lightning_modules.language_model.LanguageModelTask",
            datamodule="datamodules.ptb.PTBDataModule",
            graphs="deploy.graphs.language_model_graphs",
            predictor="deploy.tasks.language_model.LanguageModelPredictor",
            api="deploy.tasks.language_model.API",
            tensors="deploy.tasks.language_model.TENSORS",
            parity="deploy.parity.language_model_parity",
            usage='.generate("the company said")',
        ),
        Task(
            "classification",
            predict="zoo.common.predict.classification.classify",
            options="zoo.common.predict.classification.ClassificationOptions",
            architecture="zoo.networks.classifier.SequenceClassifier",
            ensemble="zoo.networks.ensemble.ClassifierEnsemble",
            lightning_module="lightning_modules.classification.ClassificationTask",
            datamodule="datamodules.text_classification.IMDBDataModule",
            graphs="deploy.graphs.classifier_graphs",
            predictor="deploy.tasks.classification.ClassifierPredictor",
            api="deploy.tasks.classification.API",
            tensors="deploy.tasks.classification.TENSORS",
            parity="deploy.parity.classification_parity",
            usage=".classify([...])",
        ),
        Task(
            "tagging",
            predict="zoo.common.predict.tagging.tag",
            options="zoo.common.predict.tagging.TaggingOptions",
            architecture="zoo.networks.tagger.SequenceTagger",
            ensemble="zoo.networks.ensemble.TaggerEnsemble",
            lightning_module="lightning_modules.tagging.TaggingTask",
            datamodule="datamodules.conll.CoNLLDataModule",
            graphs="deploy.graphs.tagger_graphs",
            predictor="deploy.tasks.tagging.TaggerPredictor",
            api="deploy.tasks.tagging.API",
            tensors="deploy.tasks.tagging.TENSORS",
            parity="deploy.parity.tagging_parity",
            usage=".tag([...])",
            tokenizers=("tokenizer", "char_tokenizer"),
        ),
        Task(
            "translation",
            predict="zoo.common.predict.translation.translate",
            options="zoo.common.predict.translation.TranslationOptions",
            architecture="zoo.networks.seq2seq.Seq2Seq",
            ensemble="zoo.networks.ensemble.Seq2SeqEnsemble",
            lightning_module="lightning_modules.translation.TranslationTask",
            datamodule="datamodules.translation.TranslationDataModule",
            graphs="deploy.graphs.seq2seq_graphs",
            predictor="deploy.tasks.translation.TranslatorPredictor",
            api="deploy.tasks.translation.API",
            tensors="deploy.tasks.translation.TENSORS",
            parity="deploy.parity.translation_parity",
            usage=".translate([...])",
            tokenizers=("source_tokenizer", "target_tokenizer"),
        ),
        Task(
            "forecasting",
            predict="zoo.common.predict.forecasting.forecast",
            options="zoo.common.predict.forecasting.ForecastOptions",
            architecture="zoo.networks.forecaster.Forecaster",
            ensemble="zoo.networks.ensemble.ForecasterEnsemble",
            lightning_module="lightning_modules.forecasting.ForecastingTask",
            datamodule="datamodules.ett.ETTDataModule",
            graphs="deploy.graphs.forecaster_graphs",
            predictor="deploy.tasks.forecasting.ForecasterPredictor",
            api="deploy.tasks.forecasting.API",
            tensors="deploy.tasks.forecasting.TENSORS",
            parity="deploy.parity.forecasting_parity",
            usage=".predict([window])",
            tokenizers=(),
        ),
    )
}


def get(name: str, where: str = "") -> Task:
    """The task called ``name``. Folders written before tasks had names stored the class name of the
    task's LightningModule (``ClassificationTask``), which is accepted too."""
    if name in TASKS:
        return TASKS[name]
    for task in TASKS.values():
        if name == task.lightning_module_name:
            return task
    prefix = f"{where}: " if where else ""
    raise ValueError(f"{prefix}unknown task {name!r} (known: {', '.join(TASKS)})")


def of_class(cls: type) -> Task:
    """The task whose LightningModule, architecture or ensemble ``cls`` is (or derives from)."""
    for base in cls.__mro__:
        path = f"{base.__module__}.{base.__qualname__}"
        for task in TASKS.values():
            if path in (task.lightning_module, task.architecture, task.ensemble):
                return task
    raise ValueError(f"{cls.__name__} is not a part of any rnnzoo task (known: {', '.join(TASKS)})")
