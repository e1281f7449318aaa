"""Greedy and batched beam-search decoding for ``zoo.Seq2Seq``, one ``decode_step`` at a time."""

import torch

from zoo.seq2seq import Seq2Seq


def default_max_length(lengths: torch.Tensor) -> int:
    """Generous target budget: twice the longest source plus ten tokens."""
    return 2 * int(lengths.max()) + 10


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq,
    source: torch.Tensor,
    lengths: torch.Tensor,
    bos: int,
    eos: int,
    max_length: int | None = None,
    return_attention: bool = False,
):
    """Most likely token at every step. Returns token lists (without ``<bos>``/``<eos>``) and, with
    ``return_attention``, each sentence's ``(target steps, S)`` attention weights (None without attention)."""
    max_length = max_length or default_max_length(lengths)
    memory, state = model.encode(source, lengths)
    batch = source.size(0)
    tokens = torch.full((batch,), bos, dtype=torch.long, device=source.device)
    done = torch.zeros(batch, dtype=torch.bool, device=source.device)
    steps, attention = [], []
    for _ in range(max_length):
        logits, state, weights = model.decode_step(tokens, state, memory)
        tokens = logits.argmax(-1).masked_fill(done, eos)
        steps.append(tokens)
        attention.append(weights)
        done |= tokens == eos
        if bool(done.all()):
            break
    hypotheses = []
    for row in torch.stack(steps, dim=1).tolist():
        hypotheses.append(row[: row.index(eos)] if eos in row else row)
    if not return_attention:
        return hypotheses
    if attention[0] is None:
        return hypotheses, [None] * batch
    stacked = torch.stack(attention, dim=1)  # (B, steps, S)
    maps = [stacked[b, : len(h) + 1, : int(lengths[b])].cpu() for b, h in enumerate(hypotheses)]
    return hypotheses, maps


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    source: torch.Tensor,
    lengths: torch.Tensor,
    bos: int,
    eos: int,
    beam_size: int = 5,
    max_length: int | None = None,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """Batched beam search; hypotheses are ranked by ``log p / length ** length_penalty``.

    Each step keeps the ``2 * beam_size`` best continuations of every sentence: those ending in
    ``<eos>`` among the first ``beam_size`` are finished, the best ``beam_size`` others go on. A
    sentence stops once it has ``beam_size`` finished hypotheses (or at ``max_length``).
    ``beam_size=1`` is exactly greedy decoding.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    max_length = max_length or default_max_length(lengths)
    batch, k, device = source.size(0), beam_size, source.device
    memory, state = model.encode(source, lengths)
    rows = torch.arange(batch, device=device).repeat_interleave(k)
    memory, state = model.select_memory(memory, rows), model.select(state, rows)
    tokens = torch.full((batch * k,), bos, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    sequences = torch.empty(batch * k, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(1, max_length + 1):
        logits, state, _ = model.decode_step(tokens, state, memory)
        vocab = logits.size(-1)
        candidates = (logits.log_softmax(-1).view(batch, k, vocab) + scores.unsqueeze(-1)).view(batch, -1)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)
        top_beam, top_token = top_index // vocab, top_index % vocab
        is_eos = top_token == eos
        first_scores, first_eos, first_beams = (t[:, :k].tolist() for t in (top_scores, is_eos, top_beam))
        for b in range(batch):
            if done[b]:
                continue
            for score, ends, beam in zip(first_scores[b], first_eos[b], first_beams[b], strict=True):
                if ends and score > float("-inf"):
                    finished[b].append((score / step**length_penalty, sequences[b * k + beam].tolist()))
            done[b] = len(finished[b]) >= k
        if all(done):
            break
        # The best k non-<eos> continuations of each sentence survive.
        alive_scores = top_scores.masked_fill(is_eos, float("-inf"))
        alive_scores, order = alive_scores.topk(k, dim=-1)
        beam = top_beam.gather(1, order)
        token = top_token.gather(1, order)
        origin = (torch.arange(batch, device=device).unsqueeze(1) * k + beam).view(-1)
        scores = alive_scores.masked_fill(torch.tensor(done, device=device).unsqueeze(1), float("-inf"))
        state = model.select(state, origin)
        tokens = token.view(-1)
        sequences = torch.cat([sequences.index_select(0, origin), tokens.unsqueeze(1)], dim=1)
    for b in range(batch):
        if not done[b]:  # out of steps: the live beams compete with what has finished
            for j in range(k):
                score = float(scores[b, j])
                if score > float("-inf"):
                    finished[b].append((score / sequences.size(1) ** length_penalty, sequences[b * k + j].tolist()))
    return [max(hypotheses, key=lambda item: item[0])[1] for hypotheses in finished]
