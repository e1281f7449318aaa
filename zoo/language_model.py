"""Recurrent language model: embedding -> recurrent stack -> projection to the vocabulary."""

import torch
from torch import nn

from zoo.dropout import make_dropout
from zoo.recurrent import CellType, RecurrentStack, State


class RNNLanguageModel(nn.Module):
    """Word- or character-level language model in the style of Zaremba et al. (2014).

    Args:
        vocab_size: number of tokens.
        embedding_dim: size of the input embedding.
        hidden_size, num_layers, cell, residual: the recurrent stack (see ``RecurrentStack``).
        dropout: dropout on the embedding output, between layers and before the projection
            (the non-recurrent connections, as in Zaremba et al.).
        locked_dropout: one dropout mask per sequence (variational dropout) instead of per step.
        tie_weights: share the embedding matrix with the output projection (Press & Wolf 2017).
            When ``embedding_dim != hidden_size`` a linear bottleneck maps the stack's output down.
        init_range: initialise every parameter uniformly in ``[-init_range, init_range]``
            (Zaremba: 0.1 small, 0.05 medium, 0.04 large); ``None`` keeps PyTorch's defaults.
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
        tie_weights: bool = False,
        residual: bool = False,
        init_range: float | None = 0.1,
    ):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = RecurrentStack(
            embedding_dim,
            hidden_size,
            num_layers,
            cell,
            dropout=dropout,
            locked_dropout=locked_dropout,
            residual=residual,
        )
        self.dropout = make_dropout(dropout, locked_dropout)
        needs_bottleneck = tie_weights and embedding_dim != hidden_size
        self.bottleneck = nn.Linear(hidden_size, embedding_dim) if needs_bottleneck else None
        self.decoder = nn.Linear(embedding_dim if tie_weights else hidden_size, vocab_size)
        if init_range is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    def init_state(self, batch_size: int, device=None) -> State:
        return self.rnn.init_state(batch_size, device=device, dtype=self.embedding.weight.dtype)

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``tokens``: ``(B, T)`` ids. Returns logits ``(B, T, vocab_size)`` and the final state."""
        x = self.dropout(self.embedding(tokens))
        out, state = self.rnn(x, state)
        out = self.dropout(out)
        if self.bottleneck is not None:
            out = self.bottleneck(out)
        return self.decoder(out), state


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, generator=None) -> int:
    """Draw one token id from ``logits`` (vocab,). ``temperature == 0`` means greedy (argmax)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.detach().float().cpu() / temperature
    if top_k is not None and top_k < logits.numel():
        kth_best = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


@torch.no_grad()
def generate(
    model: RNNLanguageModel,
    prompt_ids: list[int],
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Continue ``prompt_ids`` one token at a time, carrying the recurrent state.

    Stops after ``max_new_tokens`` or when ``eos_id`` is drawn (it is not included in the result).
    """
    if not prompt_ids:
        raise ValueError("generate needs at least one prompt token (start from the end-of-sentence id)")
    was_training = model.training
    model.eval()
    device = model.embedding.weight.device
    logits, state = model(torch.tensor([prompt_ids], device=device))
    new_ids: list[int] = []
    for _ in range(max_new_tokens):
        next_id = sample_next(logits[0, -1], temperature, top_k, generator)
        if next_id == eos_id:
            break
        new_ids.append(next_id)
        logits, state = model(torch.tensor([[next_id]], device=device), state)
    model.train(was_training)
    return new_ids
