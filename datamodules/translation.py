"""Sentence-pair translation data (Multi30k by default; IWSLT/WMT-style ``translation`` columns too)."""

import random
from collections.abc import Iterator
from functools import cached_property
from itertools import count, islice
from pathlib import Path
from typing import Literal

import datasets
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, IterableDataset

from datamodules.base import BucketedDataModule
from datamodules.batching import bucket_batches, pad_sequences
from datamodules.loading import DataError, load_splits, require_column
from datamodules.tokenization import fit_reversible_tokenizer
from zoo.common.text import BOS, EOS, IGNORE_INDEX, PAD, UNK, log

SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]  # ids 0..3 on both sides
SPLITS = ("train", "validation", "test")

Example = tuple[list[int], list[int], str, int]  # source ids (ending in <eos>), target ids, raw target, row


class TranslationDataModule(BucketedDataModule):
    """Source/target sentence pairs as id sequences, length-bucketed.

    Source sequences end in ``<eos>``; targets get ``<bos>``/``<eos>`` in the batch
    (``target_in``/``target_out``). Training pairs with a side longer than ``max_length`` tokens
    are dropped; evaluation pairs are truncated (with a warning) so every test sentence is scored. The
    fitted tokenizers keep the limit, so a long source is truncated alike wherever it is translated.

    Args (and those of ``TextDataModule``: ``data_dir``, ``max_samples``, ``tokenizer_from``,
    ``batch_size``, ``eval_batch_size``):
        source_lang, target_lang: column names (``de``/``en``), or keys of ``translation_column``.
        translation_column: a dict column ``{lang: text}`` (WMT/IWSLT on the Hub); ``None`` for
            one column per language (Multi30k).
        tokenizer: ``bpe`` (subwords) or ``word``; both decode back to the original spacing.
        joint_vocabulary: one tokenizer fitted on both sides (shared subwords) instead of one per side.
        vocab_size: per tokenizer.
        streaming: read the training split as a stream (corpora that do not fit on disk); the
            stream is sharded across DDP ranks and the tokenizers are fitted on its first
            ``tokenizer_sample`` pairs.
        max_length: tokens of a side's text, as for every datamodule (``<eos>``, and the target's
            ``<bos>``, come on top).
        predict_texts: source sentences for ``rnnzoo predict``.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        hub_name: str = "bentrevett/multi30k",
        hub_config: str | None = None,
        hub_revision: str | None = None,
        hub_subdir: str | None = None,
        source_lang: str = "de",
        target_lang: str = "en",
        translation_column: str | None = None,
        tokenizer: Literal["bpe", "word"] = "bpe",
        joint_vocabulary: bool = False,
        vocab_size: int = 8_000,
        min_frequency: int = 2,
        lowercase: bool = False,
        max_length: int = 100,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        seed: int = 0,
        max_samples: int | None = None,
        streaming: bool = False,
        tokenizer_sample: int = 100_000,
        predict_texts: list[str] | None = None,
        tokenizer_from: str | None = None,
    ):
        names = ("source_tokenizer", "target_tokenizer")
        super().__init__(data_dir, tokenizer_from, names, batch_size, eval_batch_size, max_length=max_length)
        if source_lang == target_lang:
            raise ValueError(f"source_lang and target_lang are both {source_lang!r}")
        self.save_hyperparameters()

    @property
    def language_pair(self) -> str:
        return f"{self.hparams.source_lang}-{self.hparams.target_lang}"

    def _load(self, splits: tuple[str, ...], streaming: bool = False):
        hp = self.hparams
        if streaming:
            source = self.data_dir or hp.hub_name
            files = {s: str(Path(source) / f"{s}.parquet") for s in splits} if self.data_dir else None
            try:
                loaded = datasets.load_dataset(
                    "parquet" if files else hp.hub_name,
                    None if files else hp.hub_config,
                    data_files=files,
                    revision=None if files else hp.hub_revision,
                    data_dir=None if files else hp.hub_subdir,
                    streaming=True,
                )
            except (ConnectionError, FileNotFoundError) as err:
                raise DataError(f"could not open the {splits} stream of {source!r}: {err}") from err
            return {s: loaded[s] for s in splits}
        return load_splits(hp.hub_name, self.data_dir, splits, hp.hub_config, hp.hub_revision, hp.hub_subdir)

    def _check_columns(self, dataset, split: str) -> None:
        hp = self.hparams
        if hp.translation_column is not None:
            require_column(dataset, hp.translation_column, split)
            return
        for lang in (hp.source_lang, hp.target_lang):
            require_column(dataset, lang, split)

    @cached_property
    def splits(self) -> dict:
        hp = self.hparams
        evaluation = ("validation", "test")
        loaded = dict(self._load(evaluation if hp.streaming else SPLITS))
        if hp.streaming:
            loaded["train"] = self._load(("train",), streaming=True)["train"]
        for split, dataset in loaded.items():
            if dataset.column_names is not None:  # a stream may not know its columns up front
                self._check_columns(dataset, split)
            loaded[split] = self.first_rows(dataset)
        return loaded

    def pair(self, row: dict) -> tuple[str, str]:
        """(source text, target text) of a dataset row."""
        hp = self.hparams
        texts = row[hp.translation_column] if hp.translation_column else row
        try:
            return texts[hp.source_lang], texts[hp.target_lang]
        except KeyError as err:
            raise DataError(
                f"a row has no {err.args[0]!r} text (it has {sorted(texts)}); set source_lang/target_lang"
            ) from None

    def _training_texts(self) -> Iterator[tuple[str, str]]:
        train = self.splits["train"]
        if isinstance(train, datasets.IterableDataset):
            train = islice(train, self.hparams.tokenizer_sample)
        return (self.pair(row) for row in train)

    @cached_property
    def _tokenizers(self):
        if self.pretrained_tokenizers:
            return self.pretrained_tokenizers["source_tokenizer"], self.pretrained_tokenizers["target_tokenizer"]
        hp = self.hparams
        pairs = list(self._training_texts())
        if not pairs:
            raise DataError("the training split is empty")

        def fit(texts):
            tokenizer = fit_reversible_tokenizer(
                texts,
                SPECIAL_TOKENS,
                UNK,
                kind=hp.tokenizer,
                lowercase=hp.lowercase,
                vocab_size=hp.vocab_size,
                min_frequency=hp.min_frequency,
            )
            tokenizer.enable_truncation(hp.max_length)  # <eos> (and <bos>) come after
            return tokenizer

        if hp.joint_vocabulary:
            joint = fit([text for pair in pairs for text in pair])
            return joint, joint
        return fit([s for s, _ in pairs]), fit([t for _, t in pairs])

    @property
    def source_tokenizer(self):
        return self._tokenizers[0]

    @property
    def target_tokenizer(self):
        return self._tokenizers[1]

    @property
    def source_vocab_size(self) -> int:
        return self.source_tokenizer.get_vocab_size()

    @property
    def target_vocab_size(self) -> int:
        return self.target_tokenizer.get_vocab_size()

    def _encode_pairs(self, pairs: list[tuple[str, str]], split: str) -> list[Example]:
        limit = self.hparams.max_length
        sources = self.source_tokenizer.encode_batch([s for s, _ in pairs])
        targets = self.target_tokenizer.encode_batch([t for _, t in pairs])
        eos = self.source_tokenizer.token_to_id(EOS)
        # A pretrained tokenizer may not truncate: the length limit is checked here as well.
        over = [
            bool(s.overflowing or t.overflowing) or len(s.ids) > limit or len(t.ids) > limit
            for s, t in zip(sources, targets, strict=True)
        ]
        if split == "train":
            kept = [
                (source.ids + [eos], target.ids, text_pair[1], row)
                for row, (source, target, text_pair, too_long) in enumerate(
                    zip(sources, targets, pairs, over, strict=True)
                )
                if source.ids and target.ids and not too_long
            ]
            if len(kept) < len(pairs):
                log.warning(f"dropped {len(pairs) - len(kept)} training pairs: empty or over max_length={limit}")
            return kept
        if any(over):
            log.warning(f"{sum(over)} {split} pairs exceed max_length={limit} tokens; truncated")
        return [
            (source.ids[:limit] + [eos], target.ids[:limit], text_pair[1], row)
            for row, (source, target, text_pair) in enumerate(zip(sources, targets, pairs, strict=True))
        ]

    def _encode_split(self, split: str) -> list[Example]:
        return self._encode_pairs([self.pair(row) for row in self.splits[split]], split)

    def setup(self, stage: str | None = None):
        if stage == "fit" and self.hparams.streaming:
            self.examples["validation"] = self._encode_split("validation")
            return
        super().setup(stage)

    def collate(self, examples: list[Example]) -> dict:
        bos, eos = self.target_tokenizer.token_to_id(BOS), self.target_tokenizer.token_to_id(EOS)
        source, lengths = pad_sequences([example[0] for example in examples])
        target_in, _ = pad_sequences([[bos] + example[1] for example in examples])
        target_out, _ = pad_sequences([example[1] + [eos] for example in examples], pad_value=IGNORE_INDEX)
        return {
            "source": source,
            "lengths": lengths,
            "target_in": target_in,
            "target_out": target_out,
            "references": [example[2] for example in examples],
            "ids": [example[3] for example in examples],
        }

    def train_dataloader(self):
        if not self.hparams.streaming:
            return super().train_dataloader()
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        if world_size > 1 and not isinstance(getattr(trainer, "limit_train_batches", None), int):
            raise DataError(
                "streaming under DDP needs a fixed epoch length so that every rank runs the same number of "
                "steps: pass --trainer.limit_train_batches N (about pairs / (batch_size * world size))"
            )
        shard = split_dataset_by_node(self.splits["train"], rank=rank, world_size=world_size)
        epoch = (lambda: trainer.current_epoch) if trainer else (lambda: 0)
        stream = StreamedPairBatches(shard, self, self.hparams.batch_size, self.hparams.seed, epoch, world_size > 1)
        return DataLoader(stream, batch_size=None)

    def predict_dataloader(self):
        texts = self.hparams.predict_texts
        if not texts:
            raise DataError("nothing to translate: pass --data.init_args.predict_texts '[\"Ein Hund läuft.\"]'")
        return self.text_loader(texts, self.source_tokenizer, end=EOS)


class StreamedPairBatches(IterableDataset):
    """Bucketed batches from a (rank's shard of a) streamed training split.

    Pools of ``batch_size * pool_batches`` pairs are sorted by length and cut into batches, which
    are shuffled within the pool. With ``repeat`` the shard starts over when it runs out (DDP:
    every rank keeps stepping until the epoch length the trainer sets).
    """

    def __init__(self, stream, data: TranslationDataModule, batch_size: int, seed: int, epoch, repeat: bool):
        self.stream, self.data, self.batch_size, self.seed = stream, data, batch_size, seed
        self.epoch, self.repeat, self.pool_batches = epoch, repeat, 50

    def _pools(self, seed: int) -> Iterator[list[tuple[str, str]]]:
        pool_size = self.batch_size * self.pool_batches
        for attempt in count():
            rows = iter(self.stream.shuffle(seed=seed + attempt, buffer_size=pool_size))
            while pool := [self.data.pair(row) for row in islice(rows, pool_size)]:
                yield pool
            if not self.repeat:
                return

    def __iter__(self):
        seed = self.seed + 1000 * self.epoch()
        rng = random.Random(seed)
        for pool in self._pools(seed):
            examples = self.data._encode_pairs(pool, "train")
            lengths = [len(example[0]) for example in examples]
            for batch in bucket_batches(lengths, self.batch_size, shuffle=True, seed=rng.randrange(2**31)):
                yield self.data.collate([examples[i] for i in batch])
