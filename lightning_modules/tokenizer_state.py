"""Carry the datamodule's tokenizer inside every checkpoint, so a ``.ckpt`` alone can predict."""

import lightning as L
from tokenizers import Tokenizer


class TokenizerInCheckpoint(L.LightningModule):
    """Base for tasks: takes the tokenizer from the datamodule and saves/restores/checks it."""

    tokenizer_json: str | None = None

    def setup(self, stage: str) -> None:
        tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
        if tokenizer is not None and self.tokenizer_json is None:
            self.tokenizer_json = tokenizer.to_str()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer"] = self.tokenizer_json

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("tokenizer")
        if saved is not None and self.tokenizer_json is not None:
            ours, theirs = Tokenizer.from_str(self.tokenizer_json).get_vocab(), Tokenizer.from_str(saved).get_vocab()
            if ours != theirs:
                raise ValueError(
                    f"the checkpoint's vocabulary ({len(theirs)} tokens) differs from the datamodule's "
                    f"({len(ours)} tokens): use the data (and tokenizer settings) it was trained on"
                )
        self.tokenizer_json = saved

    @property
    def tokenizer(self) -> Tokenizer:
        if self.tokenizer_json is None:
            raise RuntimeError("this model has no tokenizer: train it with a datamodule or load a checkpoint")
        return Tokenizer.from_str(self.tokenizer_json)
