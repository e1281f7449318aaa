"""Recurrent language model: embedding -> recurrent stack -> projection to the vocabulary."""

import torch
from torch import nn

from zoo import decoding
from zoo.dropout import make_dropout
from zoo.recurrent import CellType, Nonlinearity, RecurrentInit, RecurrentStack, State


class RNNLanguageModel(nn.Module):
    """Word- or character-level language model in the style of Zaremba et al. (2014).

    Args:
        vocab_size: number of tokens.
        embedding_dim: size of the input embedding.
        hidden_size, num_layers, cell, residual, recurrent_init, nonlinearity: the recurrent stack (see
            ``RecurrentStack``).
        dropout: dropout on the embedding output, between layers and before the projection
            (the non-recurrent connections, as in Zaremba et al.).
        locked_dropout: one dropout mask per sequence (variational dropout) instead of per step.
        tie_weights: share the embedding matrix with the output projection (Press & Wolf 2017).
            When ``embedding_dim != hidden_size`` a linear bottleneck maps the stack's output down.
        init_range: initialise every parameter uniformly in ``[-init_range, init_range]``
            (Zaremba: 0.1 small, 0.05 medium, 0.04 large); ``None`` keeps PyTorch's defaults. A
            ``recurrent_init`` other than ``default`` still sets the recurrent matrices.
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
        recurrent_init: RecurrentInit = "default",
        nonlinearity: Nonlinearity = "tanh",
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
            recurrent_init=recurrent_init,
            nonlinearity=nonlinearity,
        )
        self.dropout = make_dropout(dropout, locked_dropout)
        needs_bottleneck = tie_weights and embedding_dim != hidden_size
        self.bottleneck = nn.Linear(hidden_size, embedding_dim) if needs_bottleneck else None
        self.output = nn.Linear(embedding_dim if tie_weights else hidden_size, vocab_size)
        if init_range is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)
            self.rnn.init_recurrent_weights()
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
        return self.rnn.init_state(batch_size, device=device, dtype=self.embedding.weight.dtype)

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``tokens``: ``(B, T)`` ids. Returns logits ``(B, T, vocab_size)`` and the final state."""
        x = self.dropout(self.embedding(tokens))
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
    """Continue ``prompt_ids`` one token at a time, carrying the recurrent state (``zoo.decoding``:
    ``temperature`` 0 is greedy; ``seed`` fixes the draws). Stops after ``max_new_tokens`` or when
    ``eos_id`` is drawn (it is not included in the result)."""
    was_training = model.training
    model.eval()
    device = model.embedding.weight.device

    def step(tokens, state):
        logits, state = model(torch.from_numpy(tokens).to(device), state)
        return logits.float().cpu().numpy(), state

    try:
        return decoding.continue_ids(step, None, prompt_ids, eos_id, max_new_tokens, temperature, top_k, seed)
    finally:
        model.train(was_training)
