"""A linear-chain conditional random field for sequence labelling (tagging) on top of any encoder.

The encoder produces per-step emission scores ``(batch, time, num_tags)``; the CRF adds learned
tag-to-tag, start and end scores and trains with the exact sequence negative log-likelihood
(forward algorithm). ``decode`` returns the best tag sequence (Viterbi).

Hard constraints (for instance IOB2's "I-X only after B-X or I-X", see ``bio_constraints``) are a
fixed penalty of ``DISALLOWED`` added to the forbidden scores, a large finite number rather than
``-inf`` so that exported graphs and fp16 arithmetic stay finite. A forbidden path is therefore
never chosen over an allowed one unless emission scores differ by thousands.

Batches are padded at the end of each row: ``mask`` is ``True`` on real steps, ``mask[:, 0]`` must be
all ``True`` (no empty sequences), and padding never changes any result.
"""

import torch
from torch import nn

DISALLOWED = -10000.0


def _penalty(allowed: torch.Tensor | None, shape: tuple[int, ...], name: str) -> torch.Tensor:
    if allowed is None:
        return torch.zeros(shape)
    if allowed.shape != shape or allowed.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor of shape {shape}, got {allowed.dtype} {tuple(allowed.shape)}")
    return (~allowed).float() * DISALLOWED


class CRF(nn.Module):
    """Linear-chain CRF over ``num_tags`` tags, batch-first.

    Args:
        num_tags: number of tags.
        allowed: optional bool ``(num_tags, num_tags)``; ``allowed[i, j]`` permits tag ``i`` followed by tag ``j``.
        allowed_start: optional bool ``(num_tags,)``; which tags may start a sequence.
        allowed_end: optional bool ``(num_tags,)``; which tags may end a sequence.
    """

    def __init__(
        self,
        num_tags: int,
        allowed: torch.Tensor | None = None,
        allowed_start: torch.Tensor | None = None,
        allowed_end: torch.Tensor | None = None,
    ):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = num_tags
        # transitions[i, j] is the score of tag i followed by tag j.
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))
        self.start_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.register_buffer("transition_penalty", _penalty(allowed, (num_tags, num_tags), "allowed"))
        self.register_buffer("start_penalty", _penalty(allowed_start, (num_tags,), "allowed_start"))
        self.register_buffer("end_penalty", _penalty(allowed_end, (num_tags,), "allowed_end"))

    def scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The (transition, start, end) scores actually used: learned parameters plus constraint penalties."""
        return (
            self.transitions + self.transition_penalty,
            self.start_transitions + self.start_penalty,
            self.end_transitions + self.end_penalty,
        )

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood of the gold ``tags`` ``(B, T)`` over the batch."""
        return -self.log_likelihood(emissions, tags, mask).mean()

    def log_likelihood(
        self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-sequence log p(tags | emissions), shape ``(B,)``. Tags at padding positions are ignored (may be -100)."""
        mask = self._check(emissions, mask)
        tags = tags.masked_fill(~mask, 0)
        return self._path_score(emissions, tags, mask) - self._log_partition(emissions, mask)

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Viterbi: the highest-scoring tag sequence ``(B, T)``, with 0 at padding positions."""
        mask = self._check(emissions, mask)
        return viterbi(emissions, mask, *self.scores())

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor | None = None, temperature: float = 1.0):
        """p(tag of token t = j | sentence) ``(B, T, num_tags)`` under this CRF with every score divided
        by ``temperature``; 0 at padding. It is the gradient of log Z with respect to the emissions
        (forward-backward as backpropagation, Eisner 2016), differentiable when ``emissions`` are."""
        mask = self._check(emissions, mask)
        with torch.enable_grad():
            scaled = emissions / temperature
            if not scaled.requires_grad:  # emissions computed without gradients (a teacher's)
                scaled.requires_grad_()
            log_z = self._log_partition(scaled, mask, temperature).sum()
            (marginals,) = torch.autograd.grad(log_z, scaled, create_graph=emissions.requires_grad)
        return marginals

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if emissions.dim() != 3 or emissions.shape[2] != self.num_tags:
            raise ValueError(f"emissions must be (batch, time, {self.num_tags}), got {tuple(emissions.shape)}")
        if mask is None:
            return torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"mask must be {tuple(emissions.shape[:2])}, got {tuple(mask.shape)}")
        return mask.bool()

    def _path_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        transitions, start, end = self.scores()
        step_mask = mask.to(emissions.dtype)
        emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, T)
        moved = transitions[tags[:, :-1], tags[:, 1:]]  # (B, T - 1)
        score = start[tags[:, 0]] + (emitted * step_mask).sum(1) + (moved * step_mask[:, 1:]).sum(1)
        last_tag = tags.gather(1, (mask.long().sum(1) - 1).unsqueeze(1)).squeeze(1)
        return score + end[last_tag]

    def _log_partition(self, emissions: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        transitions, start, end = (scores / temperature for scores in self.scores())
        alpha = start + emissions[:, 0]  # (B, num_tags): log-sum of all paths ending in each tag
        for t in range(1, emissions.shape[1]):
            candidates = alpha.unsqueeze(2) + transitions + emissions[:, t].unsqueeze(1)
            alpha = torch.where(mask[:, t].unsqueeze(1), candidates.logsumexp(dim=1), alpha)
        return (alpha + end).logsumexp(dim=1)


# Scripted so that the ONNX exporter turns the loops over the (dynamic) sentence length into ONNX
# Loops; tracing would unroll them for the example's length.
@torch.jit.script
def viterbi(
    emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor, end: torch.Tensor
) -> torch.Tensor:
    """The highest-scoring tag sequence ``(B, T)`` under emission, transition, start and end scores."""
    batch_size, seq_len, num_tags = emissions.shape
    # Padding steps get identity backpointers, so backtracking from the last step carries each
    # sequence's final tag unchanged down to its real last step.
    identity = torch.arange(num_tags, device=emissions.device).unsqueeze(0).expand(batch_size, num_tags)
    score = start + emissions[:, 0]
    backpointers: list[torch.Tensor] = []
    for t in range(1, seq_len):
        # candidates[b, i, j]: best path ending in tag i at t - 1, then tag j at t.
        candidates = score.unsqueeze(2) + transitions + emissions[:, t].unsqueeze(1)
        best, previous = candidates.max(dim=1)
        step = mask[:, t].unsqueeze(1)
        score = torch.where(step, best, score)
        backpointers.append(torch.where(step, previous, identity))
    tag = (score + end).argmax(dim=1)
    path: list[torch.Tensor] = [tag]
    for i in range(len(backpointers) - 1, -1, -1):
        tag = backpointers[i].gather(1, tag.unsqueeze(1)).squeeze(1)
        path.append(tag)
    return torch.stack(path, dim=1).flip(1) * mask.long()


def bio_constraints(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(allowed, allowed_start, allowed_end) for IOB2 labels such as ``["O", "B-PER", "I-PER"]``.

    ``I-X`` may only follow ``B-X`` or ``I-X`` and may not start a sequence; everything else is allowed.
    Labels without a ``B-``/``I-`` prefix (``O``, or POS tags) add no constraint.
    """
    num_tags = len(labels)
    allowed = torch.ones(num_tags, num_tags, dtype=torch.bool)
    allowed_start = torch.ones(num_tags, dtype=torch.bool)
    allowed_end = torch.ones(num_tags, dtype=torch.bool)
    for j, label in enumerate(labels):
        if not label.startswith("I-"):
            continue
        entity = label[2:]
        allowed_start[j] = False
        for i, previous in enumerate(labels):
            allowed[i, j] = previous in (f"B-{entity}", f"I-{entity}")
    return allowed, allowed_start, allowed_end
