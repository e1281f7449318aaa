"""Transfer learning: start a classifier or tagger from a language model's encoder (Dai & Le 2015;
ULMFiT, Howard & Ruder 2018) or from a word-embedding file, then fine-tune it from the head down with
discriminative learning rates and gradual unfreezing (``GradualUnfreezing``)."""

import os
import re

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim.lr_scheduler import CyclicLR, LRScheduler, ReduceLROnPlateau, SequentialLR

from lightning_modules.task_io import load_task
from zoo.common import tasks
from zoo.common.text import vocabulary_difference
from zoo.networks.embeddings import EmbeddingFileError, read_aligned_embeddings
from zoo.storage.hub import ZooError


class TransferError(ValueError):
    """The encoder or embeddings to start from cannot be loaded or do not fit the model."""


class Transfer:
    """Where a task's first weights come from, applied once when training starts (``apply``).

    Args:
        encoder_from: a language model (``.ckpt``, pretrained folder, zoo entry, URL) whose word embedding
            and recurrent layers initialise the model's. Every one of its tensors must fit a tensor of
            the same name and shape (a unidirectional layer fills the forward direction of a
            bidirectional one; a tagger's first layer, which also reads character features, takes the
            language model's input weights in its word columns); the model's other tensors (the head,
            a backward direction, the character features) start fresh.
            The data must use the language model's tokenizer (``rnnzoo fit`` sets ``tokenizer_from``).
        pretrained_embeddings: a word2vec/GloVe/fastText text file or ``.npy`` + ``.vocab``
            (``zoo.networks.embeddings``) whose vectors initialise the rows of the tokens it has.
        freeze_embeddings: keep the word embedding fixed while the rest trains.
    """

    def __init__(
        self,
        encoder_from: str | os.PathLike | None = None,
        pretrained_embeddings: str | os.PathLike | None = None,
        freeze_embeddings: bool = False,
    ):
        if encoder_from and pretrained_embeddings:
            raise ValueError("encoder_from already sets the word embedding: drop pretrained_embeddings")
        if freeze_embeddings and not (encoder_from or pretrained_embeddings):
            raise ValueError("freeze_embeddings keeps pretrained vectors fixed: give encoder_from or a vectors file")
        self.encoder_from = str(encoder_from) if encoder_from else None
        self.pretrained_embeddings = str(pretrained_embeddings) if pretrained_embeddings else None
        self.freeze_embeddings = freeze_embeddings
        self.applied = False

    def attach(self, task) -> None:
        """Copy the weights into ``task.net`` (its tokenizers set from the data) and log what was copied."""
        if self.applied:
            return
        if self.encoder_from:
            rank_zero_info(load_encoder(task, self.encoder_from))
        if self.pretrained_embeddings:
            rank_zero_info(load_embeddings(task, self.pretrained_embeddings))
        if self.freeze_embeddings:
            task.net.embedding.weight.requires_grad_(False)
        self.applied = True


def transfer_from(
    encoder_from: str | None, pretrained_embeddings: str | None, freeze_embeddings: bool
) -> Transfer | None:
    """The tasks' transfer arguments as a ``Transfer`` (None: the model starts from its own initialisation)."""
    if not (encoder_from or pretrained_embeddings or freeze_embeddings):
        return None
    return Transfer(encoder_from, pretrained_embeddings, freeze_embeddings)


def load_encoder(task, source: str) -> str:
    """Copy the word embedding and recurrent stack of the language model ``source`` into ``task.net``;
    returns what was copied as one line. Raises ``TransferError`` naming both sizes when they differ."""
    try:
        language_model = load_task(source, expected=tasks.get("language_model").load("lightning_module"))
    except (ZooError, OSError, ValueError) as err:
        raise TransferError(f"encoder_from {source}: {err}") from None
    if language_model.net.embedding is None:
        raise TransferError(
            f"encoder_from {source}: it reads words through a char_cnn, not a word embedding; "
            "use a language model with word_encoder: embedding"
        )
    difference = vocabulary_difference(language_model.tokenizer_jsons, task.tokenizer_jsons)
    if difference:
        raise TransferError(
            f"encoder_from {source}: it has {difference} than the data: train with its tokenizer "
            f"(--data.init_args.tokenizer_from {source})"
        )
    encoder = {
        name: tensor
        for name, tensor in language_model.net.state_dict().items()
        if name.startswith(("embedding.", "rnn."))
    }
    ours = task.net.state_dict()
    copied, word_columns_only, count = {}, [], 0
    for name, tensor in encoder.items():
        # A one-direction layer's tensors also fit the forward direction of a bidirectional layer.
        candidates = (name, re.sub(r"^rnn\.layers\.(\d+)\.", r"rnn.layers.\1.directions.0.", name))
        target = next((candidate for candidate in candidates if candidate in ours), None)
        if target is None:
            raise TransferError(
                f"encoder_from {source}: its {name} {tuple(tensor.shape)} has no place in this model (the language "
                f"model has {language_model.net.rnn.num_layers} {language_model.net.rnn.cell} layer(s)): give the "
                "model the same cell and number of layers"
            )
        count += tensor.numel()
        if _reads_words_then_characters(task.net, target, ours[target], tensor):
            tensor = torch.cat([tensor, ours[target][:, tensor.shape[1] :]], dim=1)
            word_columns_only.append(target)
        if ours[target].shape != tensor.shape:
            raise TransferError(
                f"encoder_from {source}: its {name} is {tuple(tensor.shape)}, this model's {target} is "
                f"{tuple(ours[target].shape)}: give the model the language model's sizes (embedding_dim "
                f"{language_model.net.embedding.embedding_dim}, hidden_size {language_model.net.rnn.hidden_size}"
                ", one direction per layer after the first)"
            )
        copied[target] = tensor
    task.net.load_state_dict(copied, strict=False)
    fresh = [name for name in ours if name not in copied]
    partly = f" (the word columns of {', '.join(word_columns_only)})" if word_columns_only else ""
    return f"encoder from {source}: {len(copied)} tensors ({count:,} weights) copied{partly}; fresh: {', '.join(fresh)}"


def _reads_words_then_characters(net: nn.Module, name: str, ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Whether ``name`` is the input matrix of a tagger's first layer, which reads the word vector
    followed by character features, and ``theirs`` fits its word columns."""
    first_input = re.fullmatch(r"rnn\.layers\.0\.(directions\.\d+\.)?weight_ih_l0", name)
    chars = getattr(net, "chars", None)
    return bool(
        first_input
        and chars is not None
        and ours.shape == (theirs.shape[0], theirs.shape[1] + chars.output_size)
        and theirs.shape[1] == net.embedding.embedding_dim
    )


def load_embeddings(task, path: str) -> str:
    """Set the rows of ``task.net.embedding`` that the embedding file has a vector for; returns the
    coverage line."""
    embedding: nn.Embedding = task.net.embedding
    try:
        aligned = read_aligned_embeddings(path, task.tokenizer.get_vocab(), embedding.embedding_dim)
    except EmbeddingFileError as err:
        raise TransferError(f"pretrained_embeddings: {err}") from None
    with torch.no_grad():
        embedding.weight[aligned.found] = aligned.weights[aligned.found].to(embedding.weight)
    return aligned.summary(path)


def layer_groups(net: nn.Module) -> list[list[nn.Parameter]]:
    """``net``'s parameters from the output down: the head (all that is not below), each recurrent
    layer from the top, then the word features (embedding, character encoders)."""
    recurrent = getattr(net, "rnn", None)
    if not isinstance(recurrent, nn.Module) or not hasattr(recurrent, "layers"):
        raise TransferError(f"layer-wise fine-tuning needs a recurrent stack `rnn`; {type(net).__name__} has none")
    word_features = [getattr(net, name, None) for name in ("embedding", "chars", "char_cnn")]
    bottom = [parameter for module in word_features if module is not None for parameter in module.parameters()]
    layers = [list(layer.parameters()) for layer in reversed(recurrent.layers)]
    below = {id(parameter) for group in [bottom, *layers] for parameter in group}
    head = [parameter for parameter in net.parameters() if id(parameter) not in below]
    return [head, *layers, bottom]


class GradualUnfreezing(Callback):
    """Fine-tune from the head down (ULMFiT, Howard & Ruder 2018).

    Discriminative fine-tuning: the optimizer's single parameter group is split into the network's layer
    groups (``layer_groups``), the group ``k`` steps below the head training at the configured learning
    rate divided by ``lr_decay ** k``; every learning-rate schedule then scales each group alike.
    Gradual unfreezing: with ``unfreeze_every`` = n > 0, only the head trains for the first n epochs,
    then one more group below it every n epochs; 0 trains all groups from the start.

    Written here rather than on Lightning's ``BaseFinetuning``, which adds the unfrozen layers to the
    optimizer as new groups: LightningCLI has already built the optimizer and schedule over all
    parameters. Freezing happens after DDP wraps the model, so under DDP use
    ``--trainer.strategy ddp_find_unused_parameters_true``. Parameters frozen before training starts
    (``freeze_embeddings``) stay frozen.
    """

    def __init__(self, lr_decay: float = 2.6, unfreeze_every: int = 1):
        if lr_decay < 1:
            raise ValueError(f"lr_decay must be >= 1 (1: one learning rate for all layers), got {lr_decay}")
        if unfreeze_every < 0:
            raise ValueError(f"unfreeze_every must be >= 0 epochs, got {unfreeze_every}")
        self.lr_decay, self.unfreeze_every = lr_decay, unfreeze_every
        self.groups: list[list[nn.Parameter]] = []
        self.fixed: set[int] = set()

    def on_fit_start(self, trainer, pl_module) -> None:
        # Runs before a resumed run restores the optimizer, whose saved state has these groups.
        self.groups = layer_groups(pl_module.net)
        self.fixed = {id(parameter) for parameter in pl_module.parameters() if not parameter.requires_grad}
        for optimizer in trainer.optimizers:
            split_param_group(optimizer, self.groups, self.lr_decay)
            for config in trainer.lr_scheduler_configs:
                if config.scheduler.optimizer is optimizer:
                    follow_param_groups(config.scheduler, len(self.groups))
        self._unfreeze(trainer.current_epoch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._unfreeze(trainer.current_epoch)

    def trainable_groups(self, epoch: int) -> int:
        """How many layer groups, counted from the head, train in ``epoch``."""
        if self.unfreeze_every == 0:
            return len(self.groups)
        return min(len(self.groups), 1 + epoch // self.unfreeze_every)

    def _unfreeze(self, epoch: int) -> None:
        trainable = self.trainable_groups(epoch)
        for depth, group in enumerate(self.groups):
            for parameter in group:
                if id(parameter) not in self.fixed:
                    parameter.requires_grad_(depth < trainable)


LEARNING_RATE_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")  # per-group rates the torch schedulers read


def split_param_group(optimizer: torch.optim.Optimizer, groups: list[list[nn.Parameter]], lr_decay: float) -> None:
    """Replace ``optimizer``'s one parameter group (before its first step) by ``groups``, the ``k``-th
    with every learning rate divided by ``lr_decay ** k``."""
    if len(optimizer.param_groups) != 1 or optimizer.state:
        raise TransferError(
            f"GradualUnfreezing splits a fresh optimizer's one parameter group; this one has "
            f"{len(optimizer.param_groups)} group(s){' and has taken steps' if optimizer.state else ''}"
        )
    (template,) = optimizer.param_groups
    optimizer.param_groups.clear()
    for depth, params in enumerate(groups):
        scale = lr_decay**-depth
        settings = {key: value * scale if key in LEARNING_RATE_KEYS else value for key, value in template.items()}
        optimizer.add_param_group({**settings, "params": params})


def follow_param_groups(scheduler, count: int) -> None:
    """Make ``scheduler``, built for one parameter group, schedule ``count`` groups (the torch schedulers
    keep per-group lists)."""
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.min_lrs = scheduler.min_lrs[:1] * count
    elif isinstance(scheduler, CyclicLR):
        raise TransferError("GradualUnfreezing does not work with CyclicLR; use OneCycleLR or another schedule")
    elif isinstance(scheduler, SequentialLR):
        for inner in scheduler._schedulers:  # SequentialLR exposes its schedulers only under this name
            follow_param_groups(inner, count)
        scheduler.base_lrs = [group["initial_lr"] for group in scheduler.optimizer.param_groups]
    elif isinstance(scheduler, LRScheduler):
        scheduler.base_lrs = [group["initial_lr"] for group in scheduler.optimizer.param_groups]
        if hasattr(scheduler, "lr_lambdas"):  # LambdaLR, MultiplicativeLR: one function per group
            scheduler.lr_lambdas = scheduler.lr_lambdas[:1] * count
