"""Recurrent language model: embedding (or character-aware word vectors) -> recurrent stack ->
projection to the vocabulary."""

from typing import Literal

import torch
from torch import nn

from zoo.cells.recurrent import Block, CellType, Nonlinearity, RecurrentInit, StackConfig, State
from zoo.common import decoding
from zoo.common.text import word_bytes
from zoo.networks.char_cnn import CharCNN
from zoo.networks.dropout import make_dropout


class RNNLanguageModel(nn.Module):
    """Word- or character-level language model in the style of Zaremba et al. (2014).

    Args:
        vocab_size: number of tokens.
        embedding_dim: size of the input embedding.
        hidden_size, num_layers, cell, residual, recurrent_init, nonlinearity, heads, block, slstm_at: the recurrent
            stack (see ``RecurrentStack``).
        dropout: dropout on the embedding output, between layers and before the projection
            (the non-recurrent connections, as in Zaremba et al.).
        embedding_dropout: dropout on the word vectors alone, when it differs from ``dropout`` (Kim et
            al. 2016 drop nothing between the highway layer and the LSTM: 0).
        locked_dropout: one dropout mask per sequence (variational dropout) instead of per step.
        tie_weights: share the embedding matrix with the output projection (Press & Wolf 2017).
            When ``embedding_dim != hidden_size`` a linear bottleneck maps the stack's output down.
        init_range: initialise every parameter uniformly in ``[-init_range, init_range]``
            (Zaremba: 0.1 small, 0.05 medium, 0.04 large); ``None`` keeps PyTorch's defaults. A
            ``recurrent_init`` other than ``default`` still sets the recurrent matrices.
        word_encoder: ``embedding`` (a word embedding of ``embedding_dim``) or ``char_cnn`` (Kim et
            al. 2016: each word read as its bytes by ``zoo.CharCNN``, whose output size,
            ``sum(char_filters)``, replaces ``embedding_dim``). The words' bytes are a buffer,
            ``word_chars``, set from the vocabulary with ``set_words``.
        char_embedding_dim, char_filters, highway_layers: the ``CharCNN`` (Kim's small model: 15,
            25 x width for widths 1-6, one highway layer).
        max_word_length: bytes of a word the ``CharCNN`` reads (PTB's longest word has 19).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 200,
        hidden_size: int = 200,
        num_layers: int = 2,
        cell: CellType = "lstm",
        dropout: float = 0.0,
        locked_dropout: bool = False,
        embedding_dropout: float | None = None,
        tie_weights: bool = False,
        residual: bool = False,
        init_range: float | None = 0.1,
        recurrent_init: RecurrentInit = "default",
        nonlinearity: Nonlinearity = "tanh",
        heads: int = 4,
        block: Block = "none",
        slstm_at: list[int] | None = None,
        word_encoder: Literal["embedding", "char_cnn"] = "embedding",
        char_embedding_dim: int = 15,
        char_filters: list[int] | None = None,
        highway_layers: int = 1,
        max_word_length: int = 21,
    ):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if word_encoder not in ("embedding", "char_cnn"):
            raise ValueError(f"word_encoder must be 'embedding' or 'char_cnn', got {word_encoder!r}")
        if word_encoder == "char_cnn" and tie_weights:
            raise ValueError("tie_weights shares the word embedding, which the char_cnn word encoder does not have")
        self.vocab_size = vocab_size
        self.embedding, self.char_cnn = None, None
        if word_encoder == "char_cnn":
            self.char_cnn = CharCNN(char_embedding_dim, char_filters, highway_layers)
            width = max(max_word_length + 2, self.char_cnn.max_width)  # + the begin and end markers
            # Every word's bytes, looked up by id: a buffer, so it is saved and exported with the weights.
            self.register_buffer("word_chars", torch.zeros(vocab_size, width, dtype=torch.long))
            embedding_dim = self.char_cnn.output_size
        else:
            self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = StackConfig.pick(locals()).build(embedding_dim, hidden_size)
        self.dropout = make_dropout(dropout, locked_dropout)
        self.embedding_dropout = (
            self.dropout if embedding_dropout is None else make_dropout(embedding_dropout, locked_dropout)
        )
        needs_bottleneck = tie_weights and embedding_dim != hidden_size
        self.bottleneck = nn.Linear(hidden_size, embedding_dim) if needs_bottleneck else None
        self.output = nn.Linear(embedding_dim if tie_weights else hidden_size, vocab_size)
        if init_range is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)
            self.rnn.init_recurrent_weights()
            if self.char_cnn is not None:
                self.char_cnn.reset_special_parameters()
        if tie_weights:
            self.output.weight = self.embedding.weight

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints and pretrained folders written before the projection was named ``output`` (as in
        # ``Seq2Seq``; a ``decoder`` there is the recurrent stack) call it ``decoder``.
        for name in ("weight", "bias"):
            if prefix + "decoder." + name in state_dict:
                state_dict[prefix + "output." + name] = state_dict.pop(prefix + "decoder." + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def init_state(self, batch_size: int, device=None) -> State:
        return self.rnn.init_state(batch_size, device=device, dtype=self.output.weight.dtype)

    def set_words(self, words: list[str]) -> None:
        """The vocabulary's words by id, read by the ``char_cnn`` word encoder."""
        if len(words) != self.vocab_size:
            raise ValueError(f"{len(words)} words for a vocabulary of {self.vocab_size}")
        self.word_chars.copy_(torch.from_numpy(word_bytes(words, self.word_chars.size(1))))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Word vectors ``(B, T, embedding size)`` of ``tokens`` ``(B, T)``."""
        if self.char_cnn is None:
            return self.embedding(tokens)
        words = self.char_cnn(self.word_chars[tokens.flatten()])  # (B * T, sum(char_filters))
        return words.view(*tokens.shape, -1)

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``tokens``: ``(B, T)`` ids. Returns logits ``(B, T, vocab_size)`` and the final state."""
        x = self.embedding_dropout(self.embed(tokens))
        out, state = self.rnn(x, state)
        out = self.dropout(out)
        if self.bottleneck is not None:
            out = self.bottleneck(out)
        # A batch-first fused RNN returns a transposed view; nn.Linear on a contiguous input is one
        # addmm, on the view a matmul plus a separate bias add over the whole (B, T, vocab) logits.
        return self.output(out.contiguous()), state


@torch.no_grad()
def generate(
    model: RNNLanguageModel,
    prompt_ids: list[int],
    max_new_tokens: int = decoding.MAX_NEW_TOKENS,
    temperature: float = decoding.TEMPERATURE,
    top_k: int | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
) -> list[int]:
    """Continue ``prompt_ids`` one token at a time, carrying the recurrent state (``zoo.common.decoding``:
    ``temperature`` 0 is greedy; ``seed`` fixes the draws). Stops after ``max_new_tokens`` or when
    ``eos_id`` is drawn (it is not included in the result)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def step(tokens, state):
        logits, state = model(torch.from_numpy(tokens).to(device), state)
        return logits.float().cpu().numpy(), state

    try:
        return decoding.continue_ids(step, None, prompt_ids, eos_id, max_new_tokens, temperature, top_k, seed)
    finally:
        model.train(was_training)
